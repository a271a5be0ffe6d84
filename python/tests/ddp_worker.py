"""One rank of the two-process DDP test (run by torchrun from test_torch.py):
three AdamW steps of a frozen-key network on data of its own, then its
state dict to OUT/rank<r>.pt."""

import sys

import torch
import torch.distributed as dist
from nets import small_net
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from masterkey.torch import freeze_depthwise


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = freeze_depthwise(small_net(0), "published8", assignment="random", seed=1).train()
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    for _ in range(3):
        optimizer.zero_grad()
        x = torch.randn(4, 3, 16, 16, generator=generator)
        nn.functional.cross_entropy(ddp(x), torch.randint(0, 4, (4,), generator=generator)).backward()
        optimizer.step()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
