"""Device time of deepep_preprocess per call (torch profiler, 20 calls; its kernels and copies), at
T*K = 1,024 / 32,768 / 131,072 with 87.5% invalid slots. It cannot be captured in a CUDA graph (it
reads n_inv on the host to size its output, as SGLang's does), so this stands for its graph time.
Usage: PYTHONPATH=. python tools/deepep_device_time.py (GPU only)."""
import torch
from torch.profiler import ProfilerActivity, profile

from optimized import config, preprocess


def main() -> None:
    g = torch.Generator(device="cuda")
    g.manual_seed(0)
    for T in (128, 4096, 16384):
        ids = torch.rand(T, 256, device="cuda", generator=g).topk(8, dim=1).indices.to(torch.int32)
        ids[torch.rand(T, 8, device="cuda", generator=g) < 0.875] = -1
        for _ in range(5):
            preprocess.deepep_preprocess(ids, 256)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                preprocess.deepep_preprocess(ids, 256)
            torch.cuda.synchronize()
        tot = 0.0
        for ev in prof.key_averages():
            dt = getattr(ev, "self_device_time_total", 0) or getattr(ev, "self_cuda_time_total", 0)
            if dt:
                tot += dt
                print(f"T={T} T*K={T*8} kernel {ev.key[:50]:50s} {dt / 20:7.2f} us per call (x{ev.count / 20:g})")
        print(f"T={T} T*K={T*8} deepep_preprocess device time per call {tot / 20:.2f} us (inv 0.875)", flush=True)


if __name__ == "__main__":
    with config.value_checks(False):   # their device-to-host read would be profiled with each call
        main()
