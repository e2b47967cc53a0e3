import json
import shutil

import yaml

from synthtl.config import FinetuneConfig, StudyConfig, find_preset, load_config
from synthtl.data.datasets import classnames
from synthtl.experiments.grid import expand, style_steps
from synthtl.experiments.runner import describe_plan

GEN = ["generator.model=tiny", "generator.height=32", "generator.width=32", "generator.steps=2"]


def study(tmp_path, *overrides) -> StudyConfig:
    return load_config(StudyConfig, None, [
        f"out_dir={tmp_path / 'study'}", "finetune_preset=finetune/tiny_cpu", "generate_preset=generate/tiny",
        "style_presets.dsi=style/tiny",
        "style_presets.per_class=style/tiny_per_class", "grid.datasets=[digits]", "grid.models=[test_resnet]",
        *overrides])


def test_grid_expands_with_shared_inputs_and_dedup(tmp_path):
    s = study(tmp_path, "grid.strategies=[vanilla,bridged++,mixed]", "grid.seeds=[0,1]", "grid.volumes=[10,20]",
              "grid.prompts=[single,dsi]", "grid.guidance=[2.0,4.0]")
    plan = expand(s)
    runs, gens, styles = plan.of("finetune"), plan.of("generate"), plan.of("style")
    # vanilla does not depend on volume/guidance/prompts: 2 seeds; synthetic strategies: 2 x 2 x 2 x 2 x 2
    assert len([r for r in runs if r.labels["strategy"] == "vanilla"]) == 2
    assert len(runs) == 2 + 2 * 2 * 2 * 2 * 2
    assert len(gens) == 4  # (guidance) x (prompts): one set serves both volumes
    assert all(g.config.per_class == 20 for g in gens)  # the largest volume any run needs
    assert len(styles) == 1  # one DSI style for the dataset, shared by both guidance values
    dsi_gens = [g for g in gens if g.labels["prompt"] == "dsi"]
    assert all(g.needs == [styles[0].id] for g in dsi_gens)
    assert all(g.config.prompts.style_embedding == str(styles[0].out) for g in dsi_gens)
    for r in runs:
        if r.labels["strategy"] != "vanilla":
            assert len(r.needs) == 1 and r.config.synthetic.per_class == r.labels["volume"]
            assert r.config.synthetic.path.endswith(r.needs[0])
    assert len({r.id for r in runs}) == len(runs)


def test_strategies_that_read_a_synthetic_set_get_one(tmp_path):
    plan = expand(study(tmp_path, "grid.strategies=[vanilla,vanilla_mixup,vanilla_matched,synthetic_only]"))
    needs = {r.labels["strategy"]: bool(r.needs) for r in plan.of("finetune")}
    # vanilla_matched reads the set only to count the paired bridged run's steps
    assert needs == {"vanilla": False, "vanilla_mixup": False, "vanilla_matched": True, "synthetic_only": True}


def test_ids_are_stable_and_depend_on_the_config(tmp_path):
    a = expand(study(tmp_path, "grid.strategies=[vanilla,bridged]", "grid.seeds=[0,1]"))
    b = expand(study(tmp_path, "grid.strategies=[vanilla,bridged]", "grid.seeds=[0,1]"))
    assert [j.id for j in a.jobs] == [j.id for j in b.jobs]
    c = expand(study(tmp_path, "grid.strategies=[vanilla,bridged]", "grid.seeds=[0,1]", "finetune=[real_stage.lr=0.5]"))
    assert {j.id for j in c.of("finetune")}.isdisjoint({j.id for j in a.of("finetune")})
    assert {j.id for j in c.of("generate")} == {j.id for j in a.of("generate")}  # generation is unaffected


def test_fewshot_styles_follow_the_split_unless_shared(tmp_path):
    plan = expand(study(tmp_path, "grid.strategies=[bridged++]", "grid.seeds=[0,1]", "grid.shots=[0,4]",
                        "grid.prompts=[dsi]"))
    styles = plan.of("style")
    assert sorted((s.config.data.shots, s.config.data.split_seed) for s in styles) == [(0, -1), (4, 0), (4, 1)]
    shared = expand(study(tmp_path, "grid.strategies=[bridged++]", "grid.seeds=[0,1]", "grid.shots=[0,4]",
                          "grid.prompts=[dsi]", "grid.shared_style=true"))
    assert len(shared.of("style")) == 1 and len(shared.of("generate")) == 1


def test_model_presets_and_dry_run_estimate(tmp_path):
    plan = expand(study(tmp_path, "grid.models=[test_resnet,test_vit]", "model_presets={test_vit: finetune/vit_b16}"))
    opts = {r.labels["model"]: r.config.real_stage.optimizer for r in plan.of("finetune")}
    assert opts == {"test_resnet": "sgd", "test_vit": "adamw"}
    text = describe_plan(plan)
    assert "finetune" in text and "GPU-hours" in text and "2 to run" in text


def paper_study(tmp_path, preset, *overrides) -> StudyConfig:
    """A shipped study preset with its data root pointing at nothing (expansion must not need the data)."""
    return load_config(StudyConfig, preset, [f"data_root={tmp_path / 'nothing'}", f"out_dir={tmp_path / 'out'}",
                                             *overrides])


def test_controls_per_class_style_resolves_to_5000_steps_per_class(tmp_path):
    plan = expand(paper_study(tmp_path, "studies/controls"))
    per_class = [j for j in plan.of("style") if j.labels["prompt"] == "per_class"]
    assert len(per_class) == 3 and set(plan.missing) == {"aircraft", "cars", "dtd"}  # planned without the data
    for job in per_class:
        classes = len(classnames(job.config.data.name))
        assert style_steps(job) == (5000 * classes, 5000)
    dsi = [j for j in plan.of("style") if j.labels["prompt"] == "dsi"]
    assert all(style_steps(j) == (20000, None) for j in dsi)
    text = describe_plan(plan)  # what --dry-run prints: every style job with its steps
    for job in per_class:
        assert f"{job.id}: {5000 * len(classnames(job.config.data.name)):,} steps (5,000 per class" in text
    assert all(f"{j.id}: 20,000 steps" in text for j in dsi)
    assert "'aircraft' not found" in text and "provisional" in text


def test_kshot_runs_take_the_fewshot_recipe_in_every_study(tmp_path):
    recipe = yaml.safe_load(find_preset("finetune/fewshot_recipe").read_text())
    small = ["grid.datasets=[aircraft]", "grid.seeds=[0]"]
    runs = [r for preset in ("studies/paper/volume", "studies/paper/architectures", "studies/paper/fewshot")
            for r in expand(paper_study(tmp_path, preset, *small)).of("finetune")]
    kshot = [r for r in runs if r.labels["shots"] > 0]
    resnets = [r for r in kshot if r.labels["model"] in ("resnet18", "resnet50")]
    assert {r.labels["model"] for r in resnets} == {"resnet18", "resnet50"}
    assert len({(r.config.real_stage, r.config.synth_stage) for r in resnets}) == 1  # one recipe, every study
    vits = [r for r in kshot if r.labels["model"] in ("vit_b16", "vit_l16")]
    assert vits
    for r in [*resnets, *vits]:
        for stage, keys in recipe.items():
            for key, value in keys.items():
                assert getattr(getattr(r.config, stage), key) == value, (r.id, stage, key)
    assert all(r.config.real_stage.optimizer == "adamw" for r in vits)
    full = [r for r in runs if r.labels["shots"] == 0 and r.labels["model"] == "resnet18"]
    assert full and all(r.config.real_stage == load_config(FinetuneConfig, "finetune/resnet18").real_stage
                        for r in full)  # full-data runs keep the model's own preset


def test_ids_hash_the_science_not_the_paths_or_speed(tmp_path, folder_data):
    copy = shutil.copytree(folder_data, tmp_path / "elsewhere" / "data")
    args = ["grid.datasets=[folder]", "grid.strategies=[vanilla,bridged++]", "grid.prompts=[dsi]", "grid.shots=[0,2]"]
    a = expand(study(tmp_path, *args, f"data_root={folder_data}", f"cache_dir={tmp_path / 'ca'}"))
    b = expand(study(tmp_path / "elsewhere", *args, f"data_root={copy}", f"cache_dir={tmp_path / 'cb'}",
                     "finetune=[data.num_workers=7,device=cpu,checkpoint_every=3]",
                     "generate=[generator.fuse_qkv=false,generator.batch_size=3,writers=1]",
                     "style=[generator.fuse_qkv=false,data.num_workers=2]"))
    assert a.missing == {} and len(a.jobs) == 2 + 2 + 4  # per shots value: a style, a set, vanilla and bridged++
    assert [j.id for j in a.jobs] == [j.id for j in b.jobs]
    for job in a.jobs:
        assert str(tmp_path) not in json.dumps(job.identity)  # no path of this machine in any identity
    by_id = a.by_id()
    assert all(j.identity["synthetic"]["path"] == by_id[j.needs[0]].hash for j in a.of("finetune") if j.needs)
    other = shutil.copytree(folder_data, tmp_path / "other")
    (other / "train" / "red_fox" / "img_000.jpg").unlink()  # other data content: other ids
    c = expand(study(tmp_path, *args, f"data_root={other}", f"cache_dir={tmp_path / 'ca'}"))
    assert {j.id for j in c.jobs}.isdisjoint({j.id for j in a.jobs})
    d = expand(study(tmp_path, *args, f"data_root={folder_data}", "style=[lr=0.01]"))  # reaches every reader
    assert {j.id for j in d.of("generate")}.isdisjoint({j.id for j in a.of("generate")})
    assert {j.id for j in d.of("finetune") if j.needs}.isdisjoint({j.id for j in a.of("finetune")})
    assert {j.id for j in d.of("finetune") if not j.needs} <= {j.id for j in a.of("finetune")}
