import numpy as np
import pytest

from synthray.core.artifacts import DatasetRef, Store
from synthray.core.images import decode_array, read_images
from synthray.core.models import Models
from synthray.graph.probes import probe_setup
from synthray.graph.real import real_data
from synthray.probes.stage import view
from synthray.probes.transforms import PROBES, box_mask, fft_filter, rescale
from tests.conftest import tiny_cfg


def test_registry():
    assert PROBES.names() == ["depth", "highpass", "lowpass", "rgb", "texture"]
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert PROBES.get("rgb")(image) is image and PROBES.get("texture")(image) is image
    assert PROBES.get("rgb").identity and PROBES.get("texture").identity and not PROBES.get("lowpass").identity
    assert PROBES.get("texture").archs == ("bagnet9", "bagnet17", "bagnet33") and PROBES.get("rgb").archs is None
    assert PROBES.get("depth").worker is not None and PROBES.get("highpass").worker is None


@pytest.mark.parametrize("cutoff", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("size", [(32, 32), (31, 40)])
def test_filtered_spectrum_has_no_energy_outside_the_pass_band(cutoff, size):
    image = np.random.default_rng(1).integers(0, 256, (*size, 3)).astype(np.float64)
    keep = box_mask(*size, cutoff)
    for mask in (keep, ~keep):
        out = fft_filter(image, mask)
        spectrum = np.fft.fftshift(np.fft.fft2(out, axes=(0, 1)), axes=(0, 1))
        leak = np.abs(spectrum[~mask]).max(initial=0.0)
        assert leak < 1e-8 * np.abs(spectrum).max()
        assert np.abs(spectrum[mask]).sum() > 0


def test_box_is_a_fraction_of_nyquist():
    mask = box_mask(100, 100, 0.2)  # frequencies k/100 with |k/100| <= 0.1 -> k in -10..10
    assert mask.sum() == 21 * 21
    assert (~box_mask(100, 100, 1.0)).sum() == 0


def test_lowpass_and_highpass_views_are_rescaled_images():
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for name in ("lowpass", "highpass"):
        out = PROBES.get(name)(image)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert out.min() == 0 and out.max() == 255
    assert rescale(np.ones((4, 4, 3))).max() == 0  # a flat channel stays flat


def planned_view(cfg, probe, real, splits=("test",)):
    """The view stage on the splits the planner gives `probe` for the config's real data (`real`, built)."""
    from synthray.graph.planner import view_spec
    from synthray.graph.real import real_spec

    setup = probe_setup(cfg, probe)
    return view(Store.from_cfg(cfg), Models.from_cfg(cfg), setup, real, view_spec(setup, real_spec(cfg), splits, 0))


def test_probe_view_stage(ray_cluster, shared_storage):
    cfg = tiny_cfg(shared_storage)
    real = real_data(cfg)
    rgb = planned_view(cfg, "rgb", real)
    assert rgb == {"test": DatasetRef(real, "test")}  # identity reuses its source
    low = planned_view(cfg, "lowpass", real)["test"]
    assert low.artifact.kind == "views" and low.artifact.is_complete() and low.uri == low.artifact.file("test")
    assert low.artifact.spec["source"] == real.ref and low.artifact.spec["params"] == {"cutoff": 0.2}
    source, filtered = read_images(real.file("test")), read_images(low.uri)
    assert list(source["id"]) == list(filtered["id"])
    expected = PROBES.get("lowpass")(decode_array(source["image"][0]), cutoff=0.2)
    assert np.array_equal(decode_array(filtered["image"][0]), expected)
    manifest = low.artifact.manifest()
    again = planned_view(cfg, "lowpass", real)["test"]
    assert again.uri == low.uri and again.artifact.manifest() == manifest  # built once, reused


# --- The study's frequency filter (issue 12, item 2) ---------------------------------------------------------------


def study_bandpass(bx, cutoff_freq, lowpass=True, clip=True):
    """classifier/bp_filter.py of the study, verbatim but for `clip` (the study always clips)."""
    import torch

    assert cutoff_freq >= 0 and cutoff_freq <= 1, "cutoff must be in [0, 1]"
    fft = torch.fft.fftshift(torch.fft.fft2(bx))

    if not lowpass:
        cutoff_freq = 1 - cutoff_freq

    h, w = fft.shape[-2:]  # height and width
    cy, cx = h // 2, w // 2  # center y, center x
    ry, rx = int(cutoff_freq * cy), int(cutoff_freq * cx)

    if lowpass:
        mask = torch.zeros_like(fft)
        mask[:, cy-ry:cy+ry, cx-rx:cx+rx] = 1
    else:
        mask = torch.ones_like(fft)
        mask[:, cy-ry:cy+ry, cx-rx:cx+rx] = 0

    out = torch.fft.ifft2(torch.fft.ifftshift(fft * mask)).real
    return (out.clip(0, 1) if clip else out), mask


def study_rescale(img):
    """classifier/dataset.py `rescale_bp_filtered_image`, verbatim: each channel to [0, 1]."""
    img_min = img.amin(dim=(-2, -1), keepdim=True)
    img_max = img.amax(dim=(-2, -1), keepdim=True)
    return (img - img_min) / (img_max - img_min + 1e-8)


def _to_tensor(image: np.ndarray):
    """torchvision's ToTensor on a uint8 (H, W, 3) image, in float64 so the comparison is not float32 rounding."""
    import torch

    return torch.from_numpy(image.astype(np.float64) / 255.0).permute(2, 0, 1).contiguous()


STUDY_SIZES = [(16, 16), (15, 21), (32, 27), (7, 9), (1, 8)]


@pytest.mark.parametrize("size", STUDY_SIZES)
@pytest.mark.parametrize("cutoff", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("low", [True, False])
def test_study_mask_is_the_study_code(size, cutoff, low):
    from synthray.probes.transforms import study_mask

    _, mask = study_bandpass(_to_tensor(np.zeros((*size, 3), dtype=np.uint8)), cutoff, lowpass=low)
    assert np.array_equal(study_mask(*size, cutoff, low), mask[0].real.numpy().astype(bool))
    assert (mask[0] == mask[1]).all() and (mask[0] == mask[2]).all()  # one mask for every channel


def test_study_mask_is_one_bin_wider_below_dc():
    from synthray.probes.transforms import study_mask

    keep = study_mask(20, 20, 0.2, True)  # cy = 10, ry = int(0.2 * 10) = 2: rows 8, 9 (DC), 10, 11
    assert keep.sum() == 4 * 4 and keep[8:12, 8:12].all()
    removed = ~study_mask(20, 20, 0.1, False)  # highpass zeroes the box of int(0.9 * 10) = 9: rows 1..18
    assert removed[1:19, 1:19].all() and removed.sum() == 18 * 18  # row 0 (Nyquist) and row 19 are kept


@pytest.mark.parametrize("size", STUDY_SIZES[:3])
@pytest.mark.parametrize("low", [True, False])
@pytest.mark.parametrize("clip", [True, False])
def test_study_filter_and_view_equal_the_study(size, low, clip):
    from synthray.probes.transforms import frequency_filter

    image = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected, _ = study_bandpass(_to_tensor(image), 0.1, lowpass=low, clip=clip)
    ours = frequency_filter(image, 0.1, low, mask="study", clip=clip)
    np.testing.assert_allclose(ours / 255.0, expected.permute(1, 2, 0).numpy(), rtol=0, atol=1e-12)
    # The stored view: the study's per-channel rescale at load, quantised to uint8 (the documented deviation).
    view = PROBES.get("lowpass" if low else "highpass")(image, cutoff=0.1, mask="study", clip=clip)
    want = np.round(study_rescale(expected).permute(1, 2, 0).numpy() * 255.0)
    assert view.dtype == np.uint8 and view.shape == image.shape
    assert np.abs(view.astype(float) - want).max() <= 1 and (view == want).mean() > 0.99


def test_study_view_native_or_sized():
    from PIL import Image

    from synthray.probes.transforms import frequency_filter

    image = np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    native = PROBES.get("lowpass")(image, cutoff=0.1, mask="study", clip=True, size=None)
    assert native.shape == (30, 40, 3)  # the image as given, no resize
    sized = frequency_filter(image, 0.1, True, mask="study", clip=True, size=24)
    # The study's `image.resize((s, s))`, PIL's default filter, then ToTensor and the filter.
    expected, _ = study_bandpass(_to_tensor(np.asarray(Image.fromarray(image).resize((24, 24)))), 0.1, lowpass=True)
    assert sized.shape == (24, 24, 3)
    np.testing.assert_allclose(sized / 255.0, expected.permute(1, 2, 0).numpy(), rtol=0, atol=1e-12)


def test_legacy_options_are_the_old_filter():
    image = np.random.default_rng(6).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    old = rescale(fft_filter(image, ~box_mask(24, 20, 0.8)))  # what highpass computed before mask/clip/size existed
    assert np.array_equal(PROBES.get("highpass")(image, cutoff=0.8, mask="centred", clip=False, size=None), old)
    assert np.array_equal(PROBES.get("highpass")(image, cutoff=0.8), old)


def test_frequency_options_reach_the_key_only_when_they_change_it(tmp_path):
    base = tiny_cfg(tmp_path)
    assert dict(base.probes.lowpass) == {"cutoff": 0.2, "mask": "centred", "clip": False, "size": None, "recipe": None}
    assert probe_setup(base, "lowpass").identity == {"cutoff": 0.2}  # the key views had before the options existed
    assert probe_setup(base, "lowpass").params == {"cutoff": 0.2, "mask": "centred", "clip": False, "size": None}
    study = tiny_cfg(tmp_path, "probes.highpass.cutoff=0.1", "probes.highpass.mask=study", "probes.highpass.clip=true")
    assert probe_setup(study, "highpass").identity == {"cutoff": 0.1, "mask": "study", "clip": True}
    assert probe_setup(tiny_cfg(tmp_path, "probes.lowpass.size=64"), "lowpass").identity == {"cutoff": 0.2, "size": 64}


@pytest.mark.parametrize("override, message", [
    ("probes.lowpass.mask=circle", "unknown probes.lowpass.mask 'circle'; choices: centred, paper, study"),
    ("probes.lowpass.cutoff=0", r"probes.lowpass.cutoff must be a number in \(0, 1\] with mask=centred"),
    ("probes.highpass.cutoff=1.5", r"probes.highpass.cutoff must be a number in \(0, 1\]"),
    ("probes.lowpass.clip=maybe", "probes.lowpass.clip takes true or false"),
    ("probes.lowpass.size=0", "probes.lowpass.size must be null"),
    ("+probes.lowpass.radius=3", "probes.lowpass has no key radius"),
])
def test_bad_frequency_options_are_one_line(tmp_path, override, message):
    from synthray.core.registry import SynthrayError
    from synthray.graph.probes import check_probe

    name = override.split(".")[1]
    with pytest.raises(SynthrayError, match=message) as err:  # at compose (the schema) or at the check
        check_probe(tiny_cfg(tmp_path, override), name, ["tiny-cnn"])
    assert "\n" not in str(err.value)
    check_probe(tiny_cfg(tmp_path, "probes.lowpass.mask=study", "probes.lowpass.cutoff=0"), "lowpass", ["tiny-cnn"])


@pytest.mark.slow
def test_study_view_is_its_own_artifact(ray_cluster, shared_storage):
    study = ("probes.highpass.cutoff=0.1", "probes.highpass.mask=study", "probes.highpass.clip=true")
    cfg = tiny_cfg(shared_storage, *study)
    real = real_data(cfg)
    high = planned_view(cfg, "highpass", real)["test"]
    base = tiny_cfg(shared_storage, "probes.highpass.cutoff=0.1")
    assert high.artifact.key != planned_view(base, "highpass", real)["test"].artifact.key
    assert high.artifact.spec["params"] == {"cutoff": 0.1, "mask": "study", "clip": True}
    source, filtered = read_images(real.file("test")), read_images(high.uri)
    expected = PROBES.get("highpass")(decode_array(source["image"][0]), cutoff=0.1, mask="study", clip=True, size=None)
    assert np.array_equal(decode_array(filtered["image"][0]), expected)
