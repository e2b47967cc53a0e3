import pytest
import timm
import torch
from safetensors.torch import save_file

from synthtl.errors import ConfigError
from synthtl.models import (
    WeightsError,
    classifier,
    create_classifier,
    list_models,
    replace_head,
    reset_head,
    resolve,
    source_label_space,
)


def test_short_names_resolve():
    names = dict(list_models())
    assert names["resnet18"] == "timm:resnet18.tv_in1k" and names["clip_vit_b16_laion"].endswith("laion2b")
    assert resolve("vit_b16")[0] == "timm" and resolve("tv:resnet50") == ("tv", "resnet50")
    with pytest.raises(ConfigError, match="unknown model 'resnet81'"):
        resolve("resnet81")
    with pytest.raises(ConfigError, match="timm has no architecture"):
        create_classifier("timm:no_such_net", 3, pretrained=False)


def test_timm_classifier_with_its_data_config():
    model, dc = create_classifier("test_resnet", 5, pretrained=False, img_size=32)
    assert classifier(model).out_features == 5 and dc["input_size"] == (3, 32, 32)
    assert set(dc) >= {"mean", "std", "interpolation", "crop_pct"}
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    vit, dc = create_classifier("test_vit", 4, pretrained=False, img_size=32)
    assert vit(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_torchvision_classifier_head_is_replaced():
    model, dc = create_classifier("tv:resnet18", 7, pretrained=False)
    assert model.fc.out_features == 7 and dc["input_size"] == (3, 224, 224)


def test_local_weights_file_keeps_backbone_and_source_head(tmp_path):
    src = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    full, _ = create_classifier("test_resnet", None, pretrained=True, weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), full.state_dict().values(), strict=True))
    assert source_label_space(full) == 1000
    model, _ = create_classifier("test_resnet", 3, pretrained=True, weights=str(path))
    assert torch.equal(model.conv1[0].weight, src.conv1[0].weight) and classifier(model).out_features == 3
    with pytest.raises(ConfigError, match="does not exist"):
        create_classifier("test_resnet", 3, weights=str(tmp_path / "missing.safetensors"))


def test_offline_pretrained_weights_name_the_fix():
    with pytest.raises(WeightsError, match=r"model\.weights=.*model\.pretrained=false"):
        create_classifier("resnet18", 10, pretrained=True)


def test_reset_head_changes_only_the_head_and_is_seeded():
    model, _ = create_classifier("test_resnet", 4, pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reset_head(model, seed=1)
    after = model.state_dict()
    head = {"fc.weight", "fc.bias"}
    assert all(torch.equal(before[k], after[k]) for k in before if k not in head)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    w = after["fc.weight"].clone()
    reset_head(model, seed=1)
    assert torch.equal(model.fc.weight, w)
    replace_head(model, 9, seed=0)
    assert model.fc.out_features == 9


def test_clip_projection_head_is_not_a_leep_label_space():
    model, _ = create_classifier("timm:vit_base_patch16_clip_224.laion2b", None, pretrained=False)
    assert source_label_space(model) is None


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vit_b16", "vit_l16", "clip_vit_b16_laion", "tv_resnet50"])
def test_every_paper_backbone_builds(name):
    """The architectures of the paper and the LAION control build with their preprocessing (random weights here)."""
    model, dc = create_classifier(name, 7, pretrained=False)
    assert classifier(model).out_features == 7 and dc["input_size"][-1] == 224 and len(dc["mean"]) == 3
    del model


def test_local_weights_with_another_head_size_load_their_backbone(tmp_path):
    """A resnet fine-tuned elsewhere (a 10-class head) is that architecture: its backbone loads, the head is its own
    until the run replaces it; weights that do not fit name the tensors that differ."""
    import timm
    from safetensors.torch import save_file

    from synthtl.models import WeightsError, classifier, create_classifier, replace_head

    src = timm.create_model("test_resnet", num_classes=10)
    save_file(src.state_dict(), str(tmp_path / "ten.safetensors"))
    model, _ = create_classifier("timm:test_resnet", None, True, str(tmp_path / "ten.safetensors"))
    assert classifier(model).out_features == 10
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values(), strict=True))
    replace_head(model, 3)
    assert classifier(model).out_features == 3
    state = src.state_dict()
    state["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match=r"conv1.0.weight is torch.Size\(\[3, 3, 3, 3\]\) in the file"):
        create_classifier("timm:test_resnet", None, True, str(tmp_path / "bad.safetensors"))
    save_file(timm.create_model("test_vit").state_dict(), str(tmp_path / "vit.safetensors"))
    with pytest.raises(WeightsError, match=r"the file has no conv1.0.weight .* weights of another architecture"):
        create_classifier("timm:test_resnet", None, True, str(tmp_path / "vit.safetensors"))
