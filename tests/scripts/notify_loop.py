"""A script for `tuimon run --notify`: a tiny model trains a few steps with a Monitor that
takes its notifications' target from tuimon run (TUIMON_NOTIFY). `fail`: it raises at
step 5. Either way the process exits at once after the Monitor closes (os._exit: no
interpreter teardown), so a message still queued then would be lost. `no-close`: the
script never closes its Monitor and just ends (the Monitor's atexit close ends the run)."""

import os
import sys

import torch

import tuimon

STEPS = 12


def step(mon: tuimon.Monitor, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(X), Y)
    loss.backward()
    opt.step()
    mon.step(loss)


if __name__ == "__main__":
    fail = "fail" in sys.argv[1:]
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    X, Y = torch.randn(16, 4), torch.randn(16, 1)
    if "no-close" in sys.argv[1:]:
        mon = tuimon.Monitor(model, opt, name="notify_loop", total_steps=STEPS, log_every=1)
        for _ in range(STEPS):
            step(mon, model, opt)
        print("NOTIFY LOOP DONE", flush=True)
        sys.exit(0)
    try:
        with tuimon.Monitor(model, opt, name="notify_loop", total_steps=STEPS, log_every=1) as mon:
            for done in range(1, STEPS + 1):
                step(mon, model, opt)
                if fail and done == 5:
                    raise RuntimeError("notify_loop: a deliberate failure at step 5")
    except RuntimeError as exc:
        print(f"NOTIFY LOOP FAILED: {exc}", flush=True)
        os._exit(1)
    print("NOTIFY LOOP DONE", flush=True)
    os._exit(0)
