"""A task file's own functions are contained (`tasks/user_task.contain_task`): a check, `reward(mode)` or
example reader that raises, or returns the wrong kind of thing, ends `alignlab check` / `eval` with exit 2
and one line naming the file and the line in it, never a traceback. A reward function (a task's, or a
`reward.function` file's) is handed copies of its lists, so one that empties them is caught by the
one-value-per-completion check; and a task or reward file may define a @dataclass under `from __future__
import annotations`. Each case writes a tiny file of its own (`alignlab check` needs no model)."""

from __future__ import annotations

import itertools
import json
import sys

import pytest

from alignlab.cli import main
from alignlab.errors import UserError
from alignlab.tasks.registry import get_task

_names = itertools.count()

BASE = '''from __future__ import annotations

from alignlab.rewards.penalties import RuleResult, Verdict
from alignlab.tasks.registry import Task

ROWS = [{"prompt": f"Say 3 words about item {i}.", "n": 3} for i in range(2)]


def check(prompt, completion, n):
    count = len(completion.split())
    return Verdict({"word_count": RuleResult(count == n, float(count == n), ())}, ())


def reward(mode):
    def fn(prompts, completions, n, **kwargs):
        return [float(len(c.split()) == k) for c, k in zip(completions, n)]
    return fn


def examples(path, lang):
    return [dict(r) for r in ROWS]
'''
ENDS = BASE.count("\n")  # the line a file's ending starts on, less one
# (id, what the file ends with (NAME: the task's name), the error's line in that ending or None, message part)
HOSTILE = [
    ("check-raises", "def bad(prompt, completion, n):\n    raise ValueError('boom in check')\n"
     "TASK = Task(NAME, examples, examples, bad, reward, columns=('n',))\n", 2,
     "TASK.check raised ValueError: boom in check (on prompt 'Say 3 words about item 0.', completion 'one two three')"),
    ("check-returns-bool", "TASK = Task(NAME, examples, examples, lambda p, c, n: True, reward, columns=('n',))\n",
     1, "TASK.check returned bool True; expected a Verdict"),
    ("check-exits", "import sys\nTASK = Task(NAME, examples, examples, lambda p, c, n: sys.exit(3), reward, "
     "columns=('n',))\n", 2, "TASK.check called sys.exit(3)"),
    ("reward-raises", "def bad(mode):\n    raise KeyError(mode)\n"
     "TASK = Task(NAME, examples, examples, check, bad, columns=('n',))\n", 2, "TASK.reward('sharp') raised KeyError"),
    ("reward-not-callable", "TASK = Task(NAME, examples, examples, check, lambda mode: 1.0, columns=('n',))\n", 1,
     "TASK.reward('sharp') returned float 1.0; expected a reward function"),
    ("reward-clears-its-lists", "def clears(mode):\n    def fn(prompts, completions, n, **kwargs):\n"
     "        completions.clear()\n        n.clear()\n        return []\n    return fn\n"
     "TASK = Task(NAME, examples, examples, check, clears, columns=('n',))\n", None,
     "returned 0 values for 2 completions"),
    ("columns-a-string", "TASK = Task(NAME, examples, examples, check, reward, columns='n')\n", None,
     "TASK.columns is str 'n'; expected a tuple of column names, e.g. ('n',)"),
]
READERS = [  # (id, the held-out reader's body, message part)
    ("generator", "(dict(r) for r in ROWS)", "TASK.read_held_out returned generator; expected a list of dicts"),
    ("none", "None", "TASK.read_held_out returned None; expected a list of dicts"),
    ("no-prompt", "[{'question': 'x', 'n': 3}]",
     "TASK.read_held_out: example 0 has no 'prompt' (its keys: question, n)"),
    ("int-prompt", "[{'prompt': 42, 'n': 3}]", "TASK.read_held_out: example 0 has prompt int 42; expected"),
    ("no-column", "[{'prompt': 'Say 3 words.'}]", "TASK.read_held_out: example 0 lacks the task's column(s) n"),
    ("raises", "1 / 0", "TASK.read_held_out raised ZeroDivisionError: division by zero"),
]


def _task_file(tmp_path, ending: str):
    """A task file of BASE plus `ending`, its task named uniquely (the registry is one per process)."""
    path = tmp_path / "my_task.py"
    path.write_text(BASE + ending.replace("NAME", repr(f"guarded-{next(_names)}")), encoding="utf-8")
    return path


def _completions(tmp_path):
    path = tmp_path / "done.jsonl"
    rows = [{"prompt": "Say 3 words about item 0.", "completion": "one two three", "n": 3},
            {"prompt": "Say 3 words about item 1.", "completion": "one two", "n": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _one_line_error(argv: list[str], capsys) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"alignlab {argv[0]}: error: "), err
    return err


@pytest.mark.parametrize(("ending", "line", "expected"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_task_files_functions_are_contained_in_check(tmp_path, capsys, ending, line, expected):
    path = _task_file(tmp_path, ending)
    err = _one_line_error(["check", _completions(tmp_path), "--task", f"{path}:TASK"], capsys)
    assert expected in err, err
    if line is not None:
        assert f"{path}:{ENDS + line}: task: " in err, err


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in READERS], ids=[c[0] for c in READERS])
def test_a_task_files_example_readers_are_checked(tmp_path, body, expected):
    path = _task_file(tmp_path, f"TASK = Task(NAME, examples, lambda p, l: {body}, check, reward, columns=('n',))\n")
    task = get_task(f"{path}:TASK")
    assert task.train_examples() == [{"prompt": f"Say 3 words about item {i}.", "n": 3} for i in range(2)]
    with pytest.raises(UserError) as caught:
        task.held_out_examples()
    assert str(caught.value).startswith(f"{path}:{ENDS + 1}: task: {expected}"), str(caught.value)


def test_eval_on_a_task_file_whose_held_out_reader_is_broken_is_one_line(tmp_path, policy_dir, capsys):
    path = _task_file(tmp_path, "TASK = Task(NAME, examples, lambda p, l: None, check, reward, columns=('n',))\n")
    out = tmp_path / "eval"
    err = _one_line_error(["eval", policy_dir, "--task", f"{path}:TASK", "--samples", "1", "--out", out], capsys)
    assert f"{path}:{ENDS + 1}: task: TASK.read_held_out returned None" in err, err
    assert not out.exists()


def test_a_task_file_may_define_a_dataclass(tmp_path, capsys):
    path = _task_file(tmp_path, "from dataclasses import dataclass\n\n\n@dataclass\nclass Limits:\n"
                      "    words: int = 3\n\n\nTASK = Task(NAME, examples, examples, check, reward, columns=('n',))\n")
    assert main(["check", str(_completions(tmp_path)), "--task", f"{path}:TASK"]) == 0
    assert "pass rate: 50.0% (1/2" in capsys.readouterr().out


MUTATES = """def reward(prompts, completions, **kwargs):
    for value in kwargs.values():
        if isinstance(value, list):
            value.clear()
    completions.clear()
    return []
"""
DATACLASS = """from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Weights:
    per_char: float = 0.5


def reward(prompts, completions, **kwargs):
    return [Weights().per_char * len(c) for c in completions]
"""


def test_a_reward_that_empties_its_lists_cannot_empty_alignlabs(tmp_path):
    from alignlab.rewards.base import RewardContractError, call_reward
    from alignlab.rewards.user_code import load_reward_function

    (path := tmp_path / "mutates.py").write_text(MUTATES, encoding="utf-8")
    contained = load_reward_function(f"{path}:reward", timeout_s=5)
    completions, answers = ["a", "b"], ["1", "2"]
    with pytest.raises(RewardContractError, match="returned 0 values for 2 completions"):
        call_reward(contained, ["p", "q"], completions, answer=answers)
    prompts = ["p"]
    contained(prompts, completions, answer=answers)  # called directly, too, it is handed copies
    assert completions == ["a", "b"] and answers == ["1", "2"] and prompts == ["p"]


def test_a_grpo_run_with_a_reward_that_empties_its_lists_is_one_line(tmp_path, policy_dir, capsys):
    (path := tmp_path / "mutates.py").write_text(MUTATES, encoding="utf-8")
    err = _one_line_error(["grpo", "preflight=false", "steps=1", "num_generations=2", "run.batch_size=2",
                           "max_new_tokens=4", "run.progress=false", "run.eval_every=0", "eval_prompts=1",
                           "eval_samples=1", f"model.path={policy_dir}", f"run.out_dir={tmp_path / 'run'}",
                           f"reward.function={path}:reward"], capsys)
    assert "reward function 'reward' returned 0 values for 2 completions" in err, err


def test_a_reward_file_may_define_a_dataclass(tmp_path):
    from alignlab.rewards import user_code
    from alignlab.rewards.base import call_reward

    (path := tmp_path / "weights.py").write_text(DATACLASS, encoding="utf-8")
    assert call_reward(user_code.load_reward_function(f"{path}:reward", 5), ["p", "q"], ["ab", "abcd"]) == [1.0, 2.0]
    assert user_code.user_module_name("reward", path) not in sys.modules  # there only while the file ran
