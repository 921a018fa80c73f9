"""System samples: host load (psutil) and GPUs (NVML), every value allowed to be missing."""
