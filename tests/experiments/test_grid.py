from synthtl.config import StudyConfig, load_config
from synthtl.experiments.grid import expand
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
