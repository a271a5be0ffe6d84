"""The Python package against the CLI on a real model: the same numbers, by
the same Rust calls; arrays in and out; errors as one-line exceptions."""

from __future__ import annotations

import numpy as np
import pytest

import masterkey


def without(summary: dict, *keys: str) -> dict:
    return {k: v for k, v in summary.items() if k not in keys}


def test_extract_counts_the_filters_the_cli_counts(lite0, cli, tmp_path):
    expected = cli("extract", "efficientnet-lite0", "-o", str(tmp_path / "set"), "--json")
    assert lite0.kernels() == expected["kernels"] == {"3x3": 2624, "5x5": 6336}
    np.testing.assert_array_equal(masterkey.FilterSet.load(tmp_path / "set").filters("5x5"), lite0.filters("5x5"))
    assert len(lite0) == 2624 + 6336
    filters = lite0.filters("5x5")
    assert filters.shape == (6336, 5, 5) and filters.dtype == np.float32
    table = lite0.table()
    assert len(table) == len(lite0)
    assert list(table.columns)[:4] == ["kernel", "source_file", "format", "layer_name"]
    assert table["kernel"].iloc[0] == "3x3" and table["kernel"].iloc[-1] == "5x5"


def test_fit_gives_the_numbers_of_fit_json(lite0, cli):
    result = masterkey.fit(lite0, "published8")
    expected = cli("fit", "efficientnet-lite0", "--json")
    assert without(result.summary, "inputs") == without(expected, "inputs", "output")
    assert result.coverage == expected["coverage"]
    assert 0.0 < result.coverage["0.8"] < 1.0
    table = result.table()
    assert len(table) == len(lite0)
    assert set(table["key"]) <= set(masterkey.Bank().labels) | {""}
    assert (table["abs_cos"] >= 0.8).sum() == pytest.approx(result.coverage["0.8"] * (len(lite0) - result.summary["dead"]))


def test_an_array_fits_as_the_set_of_the_same_filters(lite0):
    filters = lite0.filters("5x5")
    from_array = masterkey.fit(filters, "published8")
    from_set = masterkey.fit(masterkey.FilterSet.from_array(filters), "published8")
    for column in ("key_index", "a", "b", "abs_cos"):
        np.testing.assert_array_equal(from_array.fits[column], from_set.fits[column])
    assert from_array.coverage == from_set.coverage
    assert from_array.summary["random_control"]["overall"] == from_set.summary["random_control"]["overall"]
    # A strided view is copied to C order, not refused.
    strided = masterkey.fit(np.asfortranarray(filters), "published8", control_seed=None)
    np.testing.assert_array_equal(strided.fits["abs_cos"], from_array.fits["abs_cos"])


def test_keys_fit_themselves_exactly():
    bank = masterkey.Bank("published8")
    keys = bank.keys
    assert keys.shape == (8, 7, 7)
    np.testing.assert_allclose(keys.reshape(8, -1).mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(keys.reshape(8, -1), axis=1), 1, atol=1e-5)
    shifted = 3.0 * keys - 0.5
    result = masterkey.fit(shifted, bank, control_seed=None)
    np.testing.assert_array_equal(result.fits["key_index"], np.arange(8))
    np.testing.assert_allclose(result.fits["a"], 3.0, rtol=1e-5)
    np.testing.assert_allclose(result.fits["b"], -0.5, atol=1e-5)
    assert result.coverage["0.95"] == 1.0


def test_sets_and_banks_round_trip_through_files(lite0, tmp_path):
    lite0.save(tmp_path / "set")
    loaded = masterkey.FilterSet.load(tmp_path / "set")
    np.testing.assert_array_equal(loaded.filters("3x3"), lite0.filters("3x3"))
    bank = masterkey.Bank(np.random.default_rng(0).standard_normal((5, 3, 3)), name="mine", labels=list("abcde"))
    bank.save(tmp_path / "mine.safetensors")
    again = masterkey.Bank(tmp_path / "mine.safetensors")
    np.testing.assert_array_equal(again.keys, bank.keys)
    assert (again.name, again.labels, again.kernel) == ("mine", list("abcde"), "3x3")
    keys, kept = masterkey.Bank().resized("3x3")
    assert keys.shape == (len(kept), 3, 3)


def test_search_compare_and_scalespace_match_the_cli(lite0, cli, tmp_path):
    calls = []
    found = masterkey.search(lite0, "kmeans", 4, kernel="5x5", seed=3, progress=lambda *a: calls.append(a))
    saved = tmp_path / "found.safetensors"
    expected = cli("search", "efficientnet-lite0", "--kernel", "5x5", "-k", "4", "--seed", "3", "-o", str(saved), "--json")
    for key in ("method", "kernel", "k", "k_rule", "usage", "curve"):
        assert found.summary[key] == expected[key], key
    np.testing.assert_array_equal(found.bank.keys, masterkey.Bank(saved).keys)
    assert calls, "the progress callback was called"
    assert list(found.curve["k"]) == list(range(1, 17))

    assert masterkey.compare("published8", found.bank, symmetries=True) == cli(
        "compare", "published8", str(saved), "--symmetries", "--json"
    )
    assert masterkey.scalespace.fit("published8") == cli("scalespace", "fit", "--json")
    ideal = tmp_path / "ideal9.safetensors"
    cli("scalespace", "bank", "--size", "9", "-o", str(ideal), parse=False)
    np.testing.assert_array_equal(masterkey.scalespace.bank(9).keys, masterkey.Bank(ideal).keys)


def test_bad_input_is_a_one_line_exception_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a model at all")
    with pytest.raises(masterkey.MasterkeyError) as caught:
        masterkey.extract([garbage])
    message = str(caught.value)
    assert "garbage.pth" in message and "\n" not in message
    with pytest.raises(masterkey.MasterkeyError, match="not a built-in bank"):
        masterkey.Bank("no-such-bank.safetensors")
    with pytest.raises(masterkey.MasterkeyError, match="expected an array"):
        masterkey.fit(np.zeros((3, 3)), "published8")
    with pytest.raises(masterkey.MasterkeyError, match="method"):
        masterkey.search(np.random.default_rng(0).standard_normal((50, 7, 7)), "nonsense", 4)
