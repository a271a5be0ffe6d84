"""Train a timm depthwise-separable CNN whose depthwise filters are frozen to
the master keys, on an ImageFolder, with PyTorch DDP.

    torchrun --nproc_per_node 8 examples/imagenet_frozen.py --data /data/imagenet \
        --model convnextv2_atto --epochs 300 --batch-size 512 --output runs/atto-frozen

``--data`` holds ``train/`` and ``val/`` (one folder per class). Defaults are
ConvNeXt's ImageNet-1k recipe (Liu et al., CVPR 2022): AdamW, peak lr 4e-3 for
a global batch of 4096 (scaled linearly to yours), weight decay 0.05, 20
warm-up epochs then cosine, label smoothing 0.1, RandAugment (9, 0.5), mixup
0.8, cutmix 1.0, random erasing 0.25, 300 epochs. Each rank reads its share of
the data (DistributedSampler); the frozen keys are buffers, so DDP broadcasts
them once and only the offsets (and every other layer) are reduced.
Checkpoints are written by rank 0 after every epoch (to a temporary name,
then renamed); ``--resume`` continues from the last one. Runs on CPU with the
gloo backend (as the test suite does on a tiny folder) and on GPUs with NCCL.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from timm.data import Mixup, create_transform
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.datasets import ImageFolder

from masterkey.torch import freeze_depthwise


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ ImageFolders")
    p.add_argument("--model", default="convnextv2_atto", help="any timm model with depthwise convolutions")
    p.add_argument("--bank", default="published8", help="built-in bank name or bank file")
    p.add_argument("--mode", default="frozen", choices=["frozen", "bank-init", "random-frozen", "trainable"])
    p.add_argument("--assignment", default="round-robin", choices=["round-robin", "random", "fit"])
    p.add_argument("--learn-scale", action="store_true", help="learn the per-channel scale a as well as b")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--lr", type=float, default=4e-3, help="peak lr for a global batch of 4096 (scaled linearly)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=20)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.8)
    p.add_argument("--cutmix", type=float, default=1.0)
    p.add_argument("--randaug", default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy ('' for none)")
    p.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--output", type=Path, default=Path("runs/frozen"))
    p.add_argument("--resume", action="store_true")
    return p.parse_args()


def setup() -> tuple[int, int, torch.device]:
    """Rank, world size and device from torchrun's environment (one process without it)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, device


def loaders(args, rank: int, world: int):
    size = args.image_size
    train_tf = create_transform(
        size, is_training=True, auto_augment=args.randaug or None, re_prob=args.reprob, interpolation="bicubic"
    )
    val_tf = create_transform(size, is_training=False, interpolation="bicubic", crop_pct=0.875)
    train = ImageFolder(args.data / "train", train_tf)
    val = ImageFolder(args.data / "val", val_tf)
    train_sampler = DistributedSampler(train, world, rank, shuffle=True, seed=args.seed, drop_last=True)
    val_sampler = DistributedSampler(val, world, rank, shuffle=False)
    common = {"batch_size": args.batch_size, "num_workers": args.workers, "pin_memory": True}
    return (
        DataLoader(train, sampler=train_sampler, drop_last=True, persistent_workers=args.workers > 0, **common),
        DataLoader(val, sampler=val_sampler, **common),
        train_sampler,
        len(train.classes),
    )


def lr_at(step: int, steps: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def evaluate(model, loader, device, amp: bool) -> float:
    model.eval()
    hits, seen = torch.zeros((), device=device), torch.zeros((), device=device)
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            hits += (model(x).argmax(1) == y).sum()
            seen += y.numel()
    if dist.is_initialized():
        dist.all_reduce(hits)
        dist.all_reduce(seen)
    return (hits / seen).item()


def main() -> None:
    args = arguments()
    rank, world, device = setup()
    torch.manual_seed(args.seed)
    train_loader, val_loader, sampler, classes = loaders(args, rank, world)
    model = timm.create_model(args.model, num_classes=classes, drop_path_rate=args.drop_path)
    if args.mode != "trainable":
        freeze_depthwise(model, args.bank, args.mode, args.assignment, args.learn_scale, seed=args.seed)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    # Weight decay on weights of rank >= 2 only (biases, norms and the keys' offsets are left alone).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    peak = args.lr * args.batch_size * world / 4096
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}], lr=peak)
    net = DistributedDataParallel(model) if world > 1 else model
    forward = torch.compile(net) if args.compile else net
    mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.label_smoothing, num_classes=classes) if args.mixup or args.cutmix else None
    criterion = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    checkpoint = args.output / "checkpoint.pt"
    start = 0
    if args.resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"]
    steps_per_epoch = len(train_loader)
    steps, warmup = args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch)
    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
        for i, (x, y) in enumerate(train_loader):
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, warmup, peak)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if mixup:
                x, y = mixup(x, y)
            with torch.autocast(device.type, torch.bfloat16, enabled=args.amp):
                loss = criterion(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(x)
            seen += len(x)
        accuracy = evaluate(forward, val_loader, device, args.amp)
        if dist.is_initialized():
            dist.all_reduce(loss_sum)
        images_per_s = seen * world / (time.perf_counter() - t0)
        if rank == 0:
            print(
                f"epoch {epoch + 1}/{args.epochs}  train loss {loss_sum.item() / (seen * world):.4f}  "
                f"val top-1 {100 * accuracy:.2f}%  {images_per_s:.0f} img/s  "
                f"({args.model}, DW {args.mode} {args.assignment}, {world} process(es))",
                flush=True,
            )
            args.output.mkdir(parents=True, exist_ok=True)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "val_top1": accuracy}
            torch.save(state, checkpoint.with_suffix(".tmp"))
            os.replace(checkpoint.with_suffix(".tmp"), checkpoint)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
