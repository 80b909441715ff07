import importlib

import pytest
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

import ternary_hf
from ternary_hf import TernaryConfig


def test_defaults_and_registration():
    cfg = TernaryConfig()
    assert (cfg.granularity, cfg.rule, cfg.mode, cfg.quant_method) == ("per_channel", "twn", "inference", "ternary")
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["ternary"] is TernaryConfig
    assert AUTO_QUANTIZER_MAPPING["ternary"] is ternary_hf.TernaryHfQuantizer


def test_import_twice_and_reload_do_not_raise():
    import ternary_hf as again  # noqa: F401

    reloaded = importlib.reload(ternary_hf)
    importlib.reload(reloaded)
    reloaded.register()
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["ternary"].__name__ == "TernaryConfig"


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("granularity", "per_row", "per_tensor, per_channel, per_group"),
        ("rule", "sign", "twn, absmean, paper"),
        ("mode", "train", "inference, qat"),
    ],
)
def test_invalid_values_name_field_and_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match=f"TernaryConfig.{field}='{value}' is invalid; allowed values: {allowed}"):
        TernaryConfig(**{field: value})


@pytest.mark.parametrize("value", [0, -4, 2.5, True])
def test_invalid_group_size(value):
    with pytest.raises(ValueError, match="group_size must be a positive integer"):
        TernaryConfig(granularity="per_group", group_size=value)


def test_modules_to_not_convert_must_be_list_of_str():
    with pytest.raises(ValueError, match="modules_to_not_convert"):
        TernaryConfig(modules_to_not_convert="pooler")


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="Unknown TernaryConfig field\\(s\\) in quantization_config: bits, sparsity"):
        TernaryConfig.from_dict({"quant_method": "ternary", "bits": 2, "sparsity": 0.5})


def test_round_trip_and_saved_form_is_inference():
    cfg = TernaryConfig(granularity="per_group", group_size=64, rule="absmean", mode="qat",
                        modules_to_not_convert=["pooler"])
    d = cfg.to_dict()
    assert d["mode"] == "inference" and "import ternary_hf" in d["loader_hint"]
    back = TernaryConfig.from_dict(d)
    assert (back.granularity, back.group_size, back.rule, back.modules_to_not_convert) == (
        "per_group", 64, "absmean", ["pooler"])
    assert "mode='qat'" in repr(cfg)
