"""Weights from other libraries: the published DDPM checkpoints in diffusers' UNet2DModel layout.

    unet, params, sched = load_diffusers_unet("weights/ddpm-cifar10-32")   # no torch needed
    eps = unet.apply({"params": params}, x_t, t)                          # x_t NHWC in [-1, 1]
    s = sched.schedule()                                                  # diffax.schedules.Schedule

See `diffax.interop.diffusers_config` (config.json and the scheduler config), `diffax.interop.diffusers_weights`
(the tensors and the loader) and docs/pretrained.md.
"""

from diffax.interop.diffusers_config import (DiffusersSchedule, config_overrides, read_scheduler_config,
                                             read_unet_config, unet_from_config)
from diffax.interop.diffusers_weights import convert_state_dict, load_diffusers_unet, read_state_dict

__all__ = [
    "DiffusersSchedule",
    "config_overrides",
    "convert_state_dict",
    "load_diffusers_unet",
    "read_scheduler_config",
    "read_state_dict",
    "read_unet_config",
    "unet_from_config",
]
