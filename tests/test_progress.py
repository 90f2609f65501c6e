"""An evaluation's progress.json (`vplan.eval.progress`): a damaged one is named in one line, not a traceback."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from vplan.errors import RunError
from vplan.eval.progress import PROGRESS_FILE, start_or_continue


@dataclass
class Evaluation:
    resume: bool = True
    overwrite: bool = False
    episodes: int = 1


@pytest.mark.parametrize("record, said", [
    ({"settings": 5}, "its entry 'settings' is not an object"),
    ({"settings": []}, "its entry 'settings' is not an object"),
    ({"settings": {}, "episodes": 5}, "its entry 'episodes' is not a list"),
])
def test_a_damaged_progress_record_is_one_line(tmp_path, record, said):
    """Its settings were checked for being there, not for their type: `settings: 5` gave a TypeError and
    `settings: []` an AttributeError (`vplan eval worldmodel resume=true`)."""
    (tmp_path / PROGRESS_FILE).write_text(json.dumps(record))
    with pytest.raises(RunError, match=rf"progress.json is damaged \({said}\); delete it to start over") as error:
        start_or_continue(Evaluation(), tmp_path, ("resume", "overwrite", "episodes"), {"episodes": []},
                          lambda progress: f"{len(progress['episodes'])} episode(s)", [])
    assert "\n" not in str(error.value)
    assert json.loads((tmp_path / PROGRESS_FILE).read_text()) == record  # kept as it was
