"""A script for `tuimon run --notify`: a tiny model trains a few steps with a Monitor that
takes its notifications' target from tuimon run (TUIMON_NOTIFY). `fail`: it raises at
step 5. Either way the process exits at once after the Monitor closes (os._exit: no
interpreter teardown), so a message still queued then would be lost."""

import os
import sys

import torch

import tuimon

STEPS = 12

if __name__ == "__main__":
    fail = "fail" in sys.argv[1:]
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    try:
        with tuimon.Monitor(model, opt, name="notify_loop", total_steps=STEPS, log_every=1) as mon:
            for step in range(1, STEPS + 1):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                mon.step(loss)
                if fail and step == 5:
                    raise RuntimeError("notify_loop: a deliberate failure at step 5")
    except RuntimeError as exc:
        print(f"NOTIFY LOOP FAILED: {exc}", flush=True)
        os._exit(1)
    print("NOTIFY LOOP DONE", flush=True)
    os._exit(0)
