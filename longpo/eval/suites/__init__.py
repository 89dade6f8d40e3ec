"""The built-in task suites of `longpo eval`, one file each (the protocol: longpo/eval/tasks/base.py);
registered in `TASK_SUITES` by longpo/eval/tasks/__init__.py."""
