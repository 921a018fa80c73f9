"""A built-in image classification set that needs no download and really can be learnt.

Each class has a smooth random prototype image; a sample is its class's prototype, faint,
slightly shifted and rescaled, under pixel noise, quantized to uint8 like a real photo. Everything
is derived from (seed, index), so any sample can be produced on demand in any order, by
any DataLoader worker, and is the same every time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PROTOTYPE_GRID = 4  # prototypes vary on a 4x4 grid, upsampled: smooth, learnable structure
# Class signal relative to unit pixel noise: an MLP reaches about 90% in an epoch, not 100%
# in ten steps, so curves look like real training.
SIGNAL = 0.2
# Sets up to this size (uint8 bytes) are generated once at start; larger ones per sample.
MATERIALIZE_BYTES = 64 * 2**20


class SyntheticImages:
    def __init__(
        self,
        num_samples: int,
        channels: int,
        image_size: int,
        num_classes: int,
        noise: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.num_samples = num_samples
        self.channels = channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.noise = noise
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.randn(
            num_classes, channels, PROTOTYPE_GRID, PROTOTYPE_GRID, generator=generator
        )
        self.prototypes = F.interpolate(
            coarse, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
        self.prototypes /= self.prototypes.std(dim=(1, 2, 3), keepdim=True)
        # The class an image is drawn from; `labels` is what the dataset reports, the same
        # unless a fault (random labels) or the regression task says otherwise.
        self.classes = torch.arange(num_samples) % num_classes
        self.labels = self.classes
        self._generator = torch.Generator()
        self._images: torch.Tensor | None = None
        if num_samples * channels * image_size**2 <= MATERIALIZE_BYTES:
            # Small sets are made once, up front, so the training loop does not wait on them.
            self._images = torch.stack([self._make(i) for i in range(num_samples)])

    def __len__(self) -> int:
        return self.num_samples

    def image(self, index: int) -> torch.Tensor:
        """The uint8 CxHxW image of sample `index`."""
        if self._images is not None:
            return self._images[index]
        return self._make(index)

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images of many samples at once, as a B×C×H×W tensor."""
        if self._images is not None:
            return self._images[indices]
        return torch.stack([self._make(int(i)) for i in indices])

    def _make(self, index: int) -> torch.Tensor:
        self._generator.manual_seed(self.seed * 1_000_003 + index + 1)
        draw = torch.randn(3 + self.prototypes[0].numel(), generator=self._generator)
        shift_y, shift_x = draw[:2].round().clamp(-2, 2).int().tolist()
        gain = 1.0 + 0.25 * float(draw[2].clamp(-2, 2))
        base = torch.roll(self.prototypes[int(self.classes[index])], (shift_y, shift_x), (1, 2))
        noise = draw[3:].view(base.shape)
        pixels = 128 + 40 * (SIGNAL * gain * base + self.noise * noise)
        return pixels.clamp_(0, 255).to(torch.uint8)
