"""The denoiser side (Revelio): feature taps on the U-Net or transformer blocks, linear and conv probes, k-SAEs.

``dl.denoiser.generation_features`` and ``dl.denoiser.image_features`` tap the blocks; ``dl.probes`` (this
package's :mod:`.probes`) trains probes on what they return.
"""

from .taps import Features, generation_features, image_features

__all__ = ["Features", "generation_features", "image_features"]
