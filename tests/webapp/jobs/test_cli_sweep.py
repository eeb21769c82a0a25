"""``edgeslim jobs sweep`` before it talks to a server: the grid arguments and their refusals."""

from __future__ import annotations

import pytest

from webapp.cli import main
from webapp.cli.jobs import parse_grid_args


def test_grid_arguments_are_typed_like_yaml():
    assert parse_grid_args(["target_mac_reduction=2,4,8.5", "importance=l1, bn_scale"]) == {
        "target_mac_reduction": [2, 4, 8.5],
        "importance": ["l1", "bn_scale"],
    }
    assert parse_grid_args(["1.global_pruning=true,false"]) == {"1.global_pruning": [True, False]}


@pytest.mark.parametrize("bad", ["ratio", "=0.5", "ratio="])
def test_a_malformed_grid_argument_exits_2_before_any_request(tmp_path, capsys, bad):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages: [{method: finetune}]\n")
    # Port 9 (discard) is never contacted: the grid is refused first.
    code = main(["jobs", "sweep", str(recipe), "--server", "http://127.0.0.1:9", "--token", "es_x",
                 "--model", "1", "--dataset", "1", "--grid", bad])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "write PARAM=V1,V2" in err or "give at least one value" in err
