# PyTorch reference for `masterkey bench dw`: depthwise convolution forward
# (no autograd) and forward + backward of a trainable layer, NCHW and
# channels-last, timed around the calls only (on CUDA: waited for, cuDNN
# autotuned first); median of `repeats`.
import json, sys, time
import torch

n, c, h, w, k, repeats = map(int, sys.argv[1:7])
device = torch.device(sys.argv[7] if len(sys.argv) > 7 else "cpu")
cuda = device.type == "cuda"
if cuda:
    torch.backends.cudnn.benchmark = True


def wait():
    if cuda:
        torch.cuda.synchronize()


torch.manual_seed(0)
out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
       "device": torch.cuda.get_device_name() if cuda else "cpu"}
for layout in ("nchw", "channels_last"):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w, device=device).contiguous(memory_format=fmt)
    weight = torch.randn(c, 1, k, k, device=device, requires_grad=True)
    bias = torch.zeros(c, device=device, requires_grad=True)
    g = torch.randn(n, c, h, w, device=device).contiguous(memory_format=fmt)
    forward, both = [], []
    for i in range(repeats + (2 if cuda else 0)):
        with torch.no_grad():
            wait()
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, weight, bias, padding=k // 2, groups=c)
            wait()
            forward.append(time.perf_counter() - t0)
        xg = x.detach().requires_grad_(True)
        wait()
        t0 = time.perf_counter()
        y = torch.nn.functional.conv2d(xg, weight, bias, padding=k // 2, groups=c)
        (y * g).sum().backward()
        wait()
        both.append(time.perf_counter() - t0)
        weight.grad = bias.grad = None
    if cuda:  # the first calls choose cuDNN's algorithm
        forward, both = forward[2:], both[2:]
    out[layout] = {"forward_s": sorted(forward)[repeats // 2], "forward_backward_s": sorted(both)[repeats // 2]}
print(json.dumps(out))
