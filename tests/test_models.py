import pytest
import torch

import models


@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize("in_chans,img_size", [(3, 32), (1, 28)])
def test_backbone_forward_backward(name, in_chans, img_size):
    torch.manual_seed(0)
    model = models.create_model(name, in_chans=in_chans, img_size=img_size)
    x = torch.randn(2, in_chans, img_size, img_size)
    out = model(x)
    assert out.shape == (2, model.num_features)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; valid models: .*resnet18.*vit_tiny"):
        models.create_model("nope")


def test_unknown_model_option_is_refused():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\] for model 'cnn_base'"):
        models.create_model("cnn_base", depth=3)


def test_bad_layer_choice_names_value():
    with pytest.raises(ValueError, match=r"act='tanh' is not one of"):
        models.create_model("cnn_base", act="tanh")


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(lambda **kw: None, name="resnet18")


def test_wildcard_listing():
    assert models.list_models("vit*") == ["vit_cpu", "vit_small", "vit_tiny"]


def test_pretrained_only_from_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="only from a local file"):
        models.create_model("cnn_base", pretrained=str(tmp_path / "missing.pt"))
    model = models.create_model("cnn_base")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = models.create_model("cnn_base", pretrained=str(tmp_path / "w.pt"))
    assert torch.equal(loaded.fc[1].weight, model.fc[1].weight)


def test_cnn_options_change_the_network():
    bn = models.create_model("cnn_base", batch_norm=True, act="elu", pool="avg", dropout=0.2, extra_block=True)
    kinds = {type(m).__name__ for m in bn.modules()}
    assert {"BatchNorm2d", "ELU", "AvgPool2d", "Dropout"} <= kinds
    assert sum(isinstance(m, torch.nn.Conv2d) for m in bn.modules()) == 4
