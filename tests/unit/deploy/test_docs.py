from pathlib import Path

from pipeline.common.settings_doc import env_rows
from pipeline.worker.settings import WorkerSettings
from trainer.settings import TrainerSettings

README = (Path(__file__).parents[3] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    rows = env_rows(WorkerSettings, "PIPELINE_") + env_rows(TrainerSettings, "TRAINER_")
    missing = [env for env, _, _ in rows if f"`{env}`" not in README]
    assert not missing, f"run `python -m pipeline settings-doc` and update README: {missing}"
    undescribed = [env for env, _, desc in rows if not desc]
    assert not undescribed, f"settings without a description: {undescribed}"


def test_readme_gives_exactly_the_two_setup_commands():
    assert "make demo" in README and "make test" in README
