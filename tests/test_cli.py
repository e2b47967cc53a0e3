from tests.conftest import run_cli


def test_listing_commands(capsys, tmp_path):
    assert run_cli("datasets", "--root", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "aircraft" in out and "flowers102" in out and "data.name=folder" in out
    assert run_cli("models") == 0
    assert "timm:resnet18.tv_in1k" in capsys.readouterr().out
    assert run_cli("strategies") == 0
    out = capsys.readouterr().out
    assert "bridged++" in out and "vanilla_matched" in out
    assert run_cli("presets") == 0
    assert "finetune/resnet18" in capsys.readouterr().out


def test_show_config_prints_resolved_yaml(capsys):
    assert run_cli("finetune", "-c", "finetune/vit_b16", "seed=3", "--show-config") == 0
    out = capsys.readouterr().out
    assert "optimizer: adamw  # " in out and "seed: 3  # seed of" in out and "name: vit_b16" in out


def test_presets_show_prints_the_file_then_every_key_with_its_help(capsys):
    assert run_cli("presets", "--show", "finetune/tiny_cpu") == 0
    out = capsys.readouterr().out
    assert out.startswith("# synthtl finetune -c finetune/tiny_cpu")  # the file, comments included
    assert "  epochs: 3  # passes over the stage's training set" in out and "momentum: 0.9  # SGD momentum" in out
    assert run_cli("presets") == 0
    assert all(len(line) <= 200 for line in capsys.readouterr().out.splitlines())


def test_version_and_help_say_what_synthtl_does(capsys):
    import pytest

    from synthtl import __version__
    from synthtl.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"synthtl {__version__}"
    text = build_parser().format_help()
    assert "synthtl: can images from a text-to-image model" in text and "->" not in text
    commands = build_parser()._subparsers._group_actions[0].choices
    assert "LoRA" in commands["learn-style"].format_help()
    for name, p in commands.items():  # every command shows examples of itself
        assert f"examples:\n  synthtl {name}" in p.format_help(), name


def test_unknown_key_exits_2_with_the_key(capsys):
    assert run_cli("finetune", "real_stage.nope=1") == 2
    assert "real_stage.nope" in capsys.readouterr().err


def test_overrides_may_follow_options_and_path_errors_are_one_line(tmp_path, capsys):
    assert run_cli("study", "demo", "--dry-run", f"out_dir={tmp_path / 's'}", "grid.seeds=[0]") == 0
    assert "finetune" in capsys.readouterr().out
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert run_cli("finetune", "-c", "finetune/tiny_cpu", f"out_dir={afile / 'runs'}", "real_stage.epochs=1") == 2
    err = capsys.readouterr().err
    assert "Not a directory" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_synthtl_warnings_are_one_line(capsys, monkeypatch):
    from synthtl import cli

    passed_on = []
    monkeypatch.setattr(cli, "_SHOW_WARNING", lambda *a: passed_on.append(a[2]))
    cli.show_warning(UserWarning("n below the feature dimension"), UserWarning,
                     "/x/site-packages/synthtl/reporting/report.py", 238)
    cli.show_warning(UserWarning("from elsewhere"), UserWarning, "/x/site-packages/torch/nn/modules.py", 3)
    assert capsys.readouterr().err == "[synthtl] warning: n below the feature dimension\n"
    assert passed_on == ["/x/site-packages/torch/nn/modules.py"]  # other libraries' warnings keep Python's form


def test_a_read_only_file_system_is_one_line(capsys, monkeypatch):
    import errno

    from synthtl import cli

    def erofs(args):
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/runs")

    monkeypatch.setattr(cli, "cmd_models", erofs)
    monkeypatch.setitem(cli.COMMANDS, "models", (erofs, "x"))
    assert run_cli("models") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("synthtl models: error: /mnt/ro/runs: Read-only file system; check the paths you gave (out_dir, "
                   "--out, data.root, ...)")


def test_the_readme_own_data_commands_take_their_keys(capsys):
    """README "Your own images, offline": every command's keys and presets load (--show-config runs nothing)."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Your own images, offline", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [x.split("  #")[0] for x in block.replace("\\\n", " ").splitlines() if x.startswith("synthtl ")]
    assert len(lines) == 9
    for line in lines:
        for cmd in line.split(" && "):
            argv = shlex.split(cmd)[1:]
            if argv[0] in ("runs", "report"):
                continue
            argv += ["--show-config"]
            assert run_cli(*argv) == 0, (cmd, capsys.readouterr().err)
            assert re.search(r"data:|set_dir:", capsys.readouterr().out)
