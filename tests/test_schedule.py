"""Training-size schedules: pure functions of (schedule, seed, epoch)."""
import pytest

from spp_cls.protocol import variant_name
from spp_cls.train.schedule import train_size


def test_fixed_is_always_224():
    assert {train_size("fixed", epoch) for epoch in range(10)} == {224}


def test_alternate_starts_at_224_and_switches_every_epoch():
    assert [train_size("alternate", epoch) for epoch in range(6)] == [224, 180, 224, 180, 224, 180]


def test_random_is_uniform_in_range_reproducible_and_seeded():
    sizes = [train_size("random", epoch, seed=3) for epoch in range(400)]
    assert min(sizes) >= 180 and max(sizes) <= 224
    assert len(set(sizes)) > 30  # it really varies over the range
    assert sizes == [train_size("random", epoch, seed=3) for epoch in range(400)]
    assert sizes != [train_size("random", epoch, seed=4) for epoch in range(400)]


def test_variants_and_bad_values():
    assert variant_name("nospp", "fixed") == "nospp"
    assert variant_name("spp", "fixed") == "spp_single"
    assert variant_name("spp", "alternate") == "spp_multi"
    assert variant_name("spp", "random") == "spp_random"
    with pytest.raises(ValueError, match="fixed input size"):
        variant_name("nospp", "alternate")
    with pytest.raises(ValueError, match="unknown size schedule"):
        train_size("cosine", 0)
    with pytest.raises(ValueError, match="epoch"):
        train_size("fixed", -1)
