"""Weights from other libraries: the published DDPM checkpoints in diffusers' UNet2DModel layout.

    unet, params, sched = load_diffusers_unet("weights/ddpm-cifar10-32")   # no torch needed
    eps = unet.apply({"params": params}, x_t, t)                          # x_t NHWC in [-1, 1]
    s = sched.schedule()                                                  # diffax.schedules.Schedule

See `diffax.interop.diffusers` and docs/pretrained.md.
"""

from diffax.interop.diffusers import (DiffusersSchedule, config_overrides, convert_state_dict, load_diffusers_unet,
                                      read_scheduler_config, read_state_dict, read_unet_config, unet_from_config)

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
