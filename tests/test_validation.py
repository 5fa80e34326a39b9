"""Validation without holes: every registered backbone and head refuses an unknown option, a data
argument passed as an option and a value of the wrong type, naming the key; the registry is the
one list of heads; every CLI turns bad input into one line and exit code 2."""
import re
import typing

import numpy as np
import optuna
import pytest

import heads
import models
from common.options import has_type
from common.registry import Registry
from heads.base import Head
from heads.speed.sparse import RULES
from training.config import TrainConfig
from training.optim import OPTIMIZERS

ENTRIES = [("model", n) for n in models.list_models()] + [("head", n) for n in heads.list_heads()]
REGISTRY = {"model": models.MODELS, "head": heads.HEADS}
ARCH_OR_HEAD = {"model": "arch", "head": "head"}


def _config(kind: str, name: str, **options) -> dict:
    """A flat trial config choosing `name` with `options` as its model_* / head_* keys."""
    return {ARCH_OR_HEAD[kind]: name, **{f"{kind}_{k}": v for k, v in options.items()}}


def _wrong(annotation):
    """A value the annotation does not admit."""
    for value in ("abc", 1.5, [1.5], {"a": 1}):
        if not has_type(value, annotation):
            return value
    raise AssertionError(f"no wrong value for {annotation}")


@pytest.mark.parametrize("kind,name", ENTRIES)
def test_an_unknown_option_is_refused_by_name(kind, name):
    with pytest.raises(ValueError, match=rf"unknown option\(s\) \['nope'\] for {kind} '{name}'; allowed: "):
        REGISTRY[kind].check(name, {"nope": 1})
    with pytest.raises(ValueError, match=rf"unknown option\(s\) \['nope'\] for {kind} '{name}' \(keys {kind}_\*\)"):
        TrainConfig.from_dict(_config(kind, name, nope=1))


@pytest.mark.parametrize("kind,name", ENTRIES)
def test_a_data_argument_is_not_an_option(kind, name):
    for arg, source in REGISTRY[kind].reserved.items():
        with pytest.raises(ValueError, match=rf"^'{arg}' is not an option of {kind} '{name}' \(keys {kind}_\*\): "
                                             f"it comes from {re.escape(source)}"):
            TrainConfig.from_dict(_config(kind, name, **{arg: 1}))


@pytest.mark.parametrize("kind,name", ENTRIES)
def test_a_wrongly_typed_option_names_the_key(kind, name):
    options = REGISTRY[kind].options(name)
    assert options or name == "resnet18" or name == "softmax", f"{kind} {name} declares no options"
    for key, (annotation, default) in options.items():
        assert has_type(default, annotation), f"{kind} {name}: default of {key!r} is not {annotation}"
        bad = _wrong(annotation)
        with pytest.raises(ValueError, match=re.escape(f"option '{key}'={bad!r} for {kind} '{name}' (keys {kind}_*) "
                                                       "has the wrong type: must be ")):
            TrainConfig.from_dict(_config(kind, name, **{key: bad}))


def test_the_builders_validate_as_the_config_does():
    with pytest.raises(ValueError, match=r"option 'widths'='abc' for model 'cnn' has the wrong type: must be a list "
                                         "of integers"):
        models.create_model("cnn", widths="abc")
    with pytest.raises(ValueError, match=r"'hierarchy' is not an option of head 'hierarchical'"):
        heads.HEADS.create("hierarchical", {"in_features": 8, "num_classes": 10}, {"hierarchy": [0] * 10})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['foo'\] for model 'cnn'"):
        models.create_model("cnn", foo=1)  # it used to take **kwargs and die in a TypeError


@pytest.mark.parametrize("flat,message", [
    ({"lr": "abc"}, r"config key 'lr'='abc' has the wrong type: must be a number"),
    ({"epochs": 2.5}, r"config key 'epochs'=2.5 has the wrong type: must be an integer"),
    ({"augment": "yes"}, r"config key 'augment'='yes' has the wrong type: must be True or False"),
    ({"train_limit": "all"}, r"config key 'train_limit'='all' has the wrong type: must be an integer or None"),
    ({"head_label_smoothing": 0.1}, r"'label_smoothing' is not an option of head 'softmax' \(keys head_\*\): it "
                                    r"comes from the training config \(key label_smoothing\)"),
])
def test_config_values_of_the_wrong_type(flat, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(flat)


def test_an_int_is_a_number_and_defaults_validate():
    cfg = TrainConfig.from_dict({"lr": 1, "warmup_epochs": 0, "train_limit": None})
    assert cfg.lr == 1 and TrainConfig.from_dict(TrainConfig().to_flat()) == TrainConfig()


def test_registry_refuses_entries_that_hide_their_options():
    reg = Registry("thing", reserved={"size": "the data"})
    with pytest.raises(TypeError, match=r"thing 'loose' takes \*\*kwargs: declare each option"):
        reg.register(lambda size=1, **kwargs: None, name="loose")
    with pytest.raises(TypeError, match=r"thing 'untyped': option 'width' has no type annotation"):
        reg.register(lambda size=1, width=3: None, name="untyped")

    def typed(size: int = 1, width: int = 3):
        return size * width

    reg.register(typed)
    assert reg.create("typed", {"size": 2, "other": 0}, {"width": 4}) == 8  # data it does not declare is dropped
    assert list(reg.options("typed")) == ["width"]


# ----------------------------------------------------------------------------- the heads' own ranges
@pytest.mark.parametrize("name", heads.list_heads())
def test_every_head_declares_its_search_ranges_a_cost_note_and_why_it_trails(name):
    cls = heads.head_class(name)
    assert "suggest" in vars(cls), f"head {name!r} declares no search ranges of its own (Head.suggest)"
    assert "cost_note" in vars(cls) and len(cls.cost_note) > 20, f"head {name!r} has no cost note"
    assert "trails_because" in vars(cls), f"head {name!r} does not say why it may trail softmax (trails_because)"
    assert (cls.trails_because == "") == (name == "softmax"), f"head {name!r}: only softmax, the reference, says none"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for num_classes in (10, 100, 1000):
        for _ in range(10):
            trial = study.ask()
            derived = cls.suggest(trial, num_classes)
            flat = {**trial.params, **derived}
            options = {k[len("head_"):]: v for k, v in flat.items() if k.startswith("head_")}
            assert all(k.startswith(("head_", "search_")) for k in flat), flat  # flat, stable names
            heads.HEADS.check(name, options)  # real options, of their declared types
            heads.create_head(name, 8, num_classes, hierarchy=np.arange(num_classes) % 5, **options)  # in range
            study.tell(trial, 0.0)


def test_a_head_without_ranges_says_so():
    with pytest.raises(NotImplementedError, match="head Head declares no search ranges"):
        Head.suggest(None, 100)


def test_the_report_reads_cost_notes_from_the_registry():
    import inspect

    from analysis import report
    from search_spaces import spaces

    assert not hasattr(report, "HEAD_NOTES") and not hasattr(spaces, "ALL_HEADS")
    assert "head_class(h).cost_note" in inspect.getsource(report.build_report)


# ----------------------------------------------------------------------------- the command lines
def _one_line(err: str) -> str:
    """Our one error line (torch may log an unrelated warning about CUDA on this machine first)."""
    lines = [line for line in err.strip().splitlines() if "No CUDA runtime is found" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv,message", [
    (["--model-opt", "widths=abc", "--arch", "cnn"],
     "option 'widths'='abc' for model 'cnn' (keys model_*) has the wrong type: must be a list of integers"),
    (["--arch", "cnn", "--model-opt", "foo=1"], "unknown option(s) ['foo'] for model 'cnn' (keys model_*)"),
    (["--head", "adaptive", "--head-opt", "cutoffs=abc"],
     "option 'cutoffs'='abc' for head 'adaptive' (keys head_*) has the wrong type: must be a list of integers or None"),
    (["--head-opt", "label_smoothing=0.2"], "'label_smoothing' is not an option of head 'softmax'"),
    (["--head", "hierarchical", "--head-opt", "hierarchy=[0,1]"],
     "'hierarchy' is not an option of head 'hierarchical' (keys head_*): it comes from the dataset"),
    (["--model-opt", "in_chans=1"], "'in_chans' is not an option of model 'cnn_base' (keys model_*): it comes from"),
])
def test_train_cli_refuses_bad_options_in_one_line(capsys, tmp_path, argv, message):
    from training import train

    assert train.main(argv + ["--data-dir", str(tmp_path), "--no-download"]) == 2
    assert message in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv,message", [
    (["--set", "lr=abc"], "config key 'lr'='abc' has the wrong type: must be a number"),
    (["--set", "model_widths=abc"], "option 'widths'='abc' for model 'cnn' (keys model_*) has the wrong type"),
    (["--set", "batch_size=[1,2]"], "config key 'batch_size'=[1, 2] has the wrong type: must be an integer"),
])
def test_search_cli_refuses_wrong_types_before_ray_starts(capsys, tmp_path, argv, message):
    from tuning import search

    assert search.main(["--space", "smoke", "--storage", str(tmp_path), "--no-dashboard"] + argv) == 2
    assert message in _one_line(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv,message", [
    (["--heads", "softmax,nope"], "unknown head 'nope'; valid heads: adaptive"),
    (["--classes", "1,100"], "--classes [1, 100] must all be >= 2"),
    (["--classes", "1e5"], "--classes='1e5': expected comma-separated integers"),
    (["--repeats", "0"], "--repeats 0 and --num-sampled 64 >= 1"),
    (["--device", "tpu"], "--device='tpu': expected cpu or cuda"),
    (["--threads", "0"], "--threads=0 must be >= 1"),
])
def test_bench_cli_refuses_bad_input_in_one_line(capsys, tmp_path, argv, message):
    from tools import heads_bench as bench

    assert bench.main(argv + ["--out", str(tmp_path)]) == 2
    assert message in _one_line(capsys.readouterr().err)


def test_trial_config_annotations_cover_every_field():
    hints = typing.get_type_hints(TrainConfig)
    assert set(hints) == {f for f in TrainConfig.__dataclass_fields__}


# ----------------------------------------------------------------------------- registries own their knowledge
def test_a_registry_refuses_an_entry_without_what_it_requires():
    reg = Registry("widget", requires=("recipe", "ranges"))
    with pytest.raises(ValueError, match="widget 'w' declares no ranges: every widget owns its recipe, ranges"):
        @reg.register(recipe={})
        def w(size: int = 1):
            return size

    @reg.register(recipe={"lr": 1.0}, ranges=(0, 1))
    def v(size: int = 1):
        return size

    assert reg.meta("v") == {"recipe": {"lr": 1.0}, "ranges": (0, 1)}
    with pytest.raises(ValueError, match="unknown widget 'x'; valid widgets: v"):
        reg.meta("x")


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_owns_a_recipe_that_trains(name):
    """Its family recipe is a valid trial config for it, in its optimizer's own search ranges."""
    recipe = models.MODELS.meta(name)["recipe"]
    assert {"optimizer", "lr", "weight_decay", "batch_size"} <= set(recipe), recipe
    TrainConfig.from_dict({"arch": name, **recipe})
    ranges = OPTIMIZERS.meta(recipe["optimizer"])
    low, high = ranges["lr_range"]
    assert low * recipe["batch_size"] / 128 <= recipe["lr"] <= high * recipe["batch_size"] / 128
    assert ranges["weight_decay_range"][0] <= recipe["weight_decay"] <= ranges["weight_decay_range"][1]


@pytest.mark.parametrize("name", OPTIMIZERS.list())
def test_every_optimizer_owns_its_ranges_and_a_lazy_rule_that_exists(name):
    meta = OPTIMIZERS.meta(name)
    assert meta["lazy_rule"] in RULES
    for key in ("lr_range", "weight_decay_range"):
        low, high = meta[key]
        assert 0 < low < high, (name, key, meta[key])
