"""Figure commands write into the run folder by default, never into the current folder."""

from __future__ import annotations

from click.testing import CliRunner

from trainer.cli import main


def test_predict_and_report_default_into_the_run_folder(demo_data, demo_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = demo_data / "images" / "val" / "dots" / "dots-0000.jpg"
    for args, made in ((["predict", demo_run, image], "fig4.png"), (["report", demo_run], "report.md")):
        result = CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        assert (demo_run / made).is_file() and str(demo_run / made) in result.stdout + result.stderr
    assert not list(tmp_path.iterdir())
    checkpoint_file = CliRunner().invoke(main, ["predict", str(demo_run / "last.pt"), str(image)])
    assert checkpoint_file.exit_code == 0 and f"wrote {demo_run / 'fig4.png'}" in checkpoint_file.stdout
