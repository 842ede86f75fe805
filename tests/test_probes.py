import numpy as np
import pytest

from synthray.artifacts import DatasetRef, Store
from synthray.data.real import real_data
from synthray.images import decode_array, read_images
from synthray.models import Models
from synthray.probes.stage import probe_setup, view
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


def test_probe_view_stage(ray_cluster, shared_storage):
    cfg = tiny_cfg(shared_storage)
    store, models = Store.from_cfg(cfg), Models.from_cfg(cfg)
    real = real_data(cfg)
    rgb = view(store, models, probe_setup(cfg, "rgb"), real, ("test",))
    assert rgb == {"test": DatasetRef(real, "test")}  # identity reuses its source
    low = view(store, models, probe_setup(cfg, "lowpass"), real, ("test",))["test"]
    assert low.artifact.kind == "views" and low.artifact.is_complete() and low.uri == low.artifact.file("test")
    assert low.artifact.spec["source"] == real.ref and low.artifact.spec["params"] == {"cutoff": 0.2}
    source, filtered = read_images(real.file("test")), read_images(low.uri)
    assert list(source["id"]) == list(filtered["id"])
    expected = PROBES.get("lowpass")(decode_array(source["image"][0]), cutoff=0.2)
    assert np.array_equal(decode_array(filtered["image"][0]), expected)
    manifest = low.artifact.manifest()
    again = view(store, models, probe_setup(cfg, "lowpass"), real, ("test",))["test"]
    assert again.uri == low.uri and again.artifact.manifest() == manifest  # built once, reused
