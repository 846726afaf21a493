"""precompute.folders: the one check every CLI makes of a pipeline-folder argument."""
from precompute.folders import pipeline_folder_problem


def test_a_pipeline_folder_passes_and_anything_else_is_named(tmp_path):
    assert pipeline_folder_problem(tmp_path) == f"{tmp_path}: not a pipeline folder (no model_index.json)"
    assert pipeline_folder_problem(tmp_path / "nowhere", "--teacher") == (
        f"--teacher {tmp_path / 'nowhere'}: not a pipeline folder (no model_index.json)")
    assert pipeline_folder_problem("x", "--student one-step=").startswith("--student one-step=x: ")
    (tmp_path / "model_index.json").write_text("{}")
    assert pipeline_folder_problem(tmp_path) is None
    assert pipeline_folder_problem(str(tmp_path), "--base") is None
