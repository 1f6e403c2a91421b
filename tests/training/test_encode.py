"""The module's VAE step: a sample whose motion frames are its reference repeated reuses the reference latent."""

from __future__ import annotations

import torch

from cyberhost.models import CyberHostConfig
from cyberhost.training.stages import RANDOM_STAGE1, Stage2Module


def test_motion_from_reference_reuses_the_reference_latent() -> None:
    torch.manual_seed(0)
    module = Stage2Module(RANDOM_STAGE1, model=CyberHostConfig(size="tiny", stage=2)).eval()
    g = torch.Generator().manual_seed(1)
    b, f, m, hw = 3, 2, 2, (64, 64)
    reference = torch.randint(0, 256, (b, 3, *hw), generator=g, dtype=torch.uint8)
    motion = torch.randint(0, 256, (b, m, 3, *hw), generator=g, dtype=torch.uint8)
    from_ref = torch.tensor([True, False, True])
    motion[from_ref] = reference[from_ref][:, None].expand(-1, m, -1, -1, -1)  # what build_conditions writes
    batch = {"target": torch.randint(0, 256, (b, f, 3, *hw), generator=g, dtype=torch.uint8), "reference": reference,
             "motion": motion, "motion_from_reference": from_ref}

    encoded = []
    encode = module.model.encode_images
    module.model.encode_images = lambda images, **kw: (encoded.append(len(images)), encode(images, **kw))[1]
    fast = module.encode(batch)
    assert encoded == [b * f, b, m], encoded  # targets, references, then only the one sample's own motion frames

    encoded.clear()
    slow = module.encode({k: v for k, v in batch.items() if k != "motion_from_reference"})
    assert encoded == [b * f, b, b * m]
    torch.testing.assert_close(fast["motion"], slow["motion"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast["motion"][0, 1], fast["reference"][0])
