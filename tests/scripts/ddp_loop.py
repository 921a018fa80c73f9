"""A DDP training loop as PyTorch's DDP tutorial writes it, with the two tuimon lines.

Run under torchrun. Settings come from the environment so tests can steer it:
STEPS (default 100000), PACE (seconds to sleep after each step, so a test can act while
it runs), SLOW_RANK and SLOW_SECONDS (that rank sleeps before each forward, as a slow data
loader would), NAN_RANK and NAN_AT (that rank's loss becomes NaN at that step),
OUT (a directory: each rank saves its final weights there as rank<N>.pt),
RANK_TIMEOUT (monitor.rank_timeout, seconds), RAISE_RANK and RAISE_AT (that rank's
training code raises at that step).
"""

import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import tuimon


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # every replica starts from the same weights
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    ddp_model = DDP(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.05)
    steps = int(os.environ.get("STEPS", "100000"))
    pace = float(os.environ.get("PACE", "0"))
    slow_rank = int(os.environ.get("SLOW_RANK", "-1"))
    slow = float(os.environ.get("SLOW_SECONDS", "0"))
    nan_rank = int(os.environ.get("NAN_RANK", "-1"))
    nan_at = int(os.environ.get("NAN_AT", "0"))
    raise_rank = int(os.environ.get("RAISE_RANK", "-1"))
    raise_at = int(os.environ.get("RAISE_AT", "0"))
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    settings = (
        {"rank_timeout": float(os.environ["RANK_TIMEOUT"])} if "RANK_TIMEOUT" in os.environ else {}
    )
    with tuimon.Monitor(ddp_model, optimizer, total_steps=steps, log_every=2, **settings) as mon:
        for step in range(1, steps + 1):
            inputs = torch.randn(16, 8, generator=data)
            targets = inputs.sum(dim=1, keepdim=True)
            if rank == slow_rank:
                time.sleep(slow)
            loss = F.mse_loss(ddp_model(inputs), targets)
            if rank == raise_rank and step == raise_at:
                raise RuntimeError("CUDA out of memory (a stand-in raised by the test)")
            if rank == nan_rank and step >= nan_at > 0:
                loss = loss * float("nan")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mon.step(loss, inputs=inputs)
            if pace:
                time.sleep(pace)
    out = os.environ.get("OUT")
    if out:
        torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
