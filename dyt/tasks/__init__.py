"""Tasks by name; a model family names its task in dyt.models.FAMILIES."""
from dyt.tasks.base import Task
from dyt.tasks.classification import ClassificationTask
from dyt.tasks.diffusion import DiffusionTask
from dyt.tasks.language import LanguageTask

TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "language": LanguageTask,
                                "diffusion": DiffusionTask}


def build_task(cfg, dist) -> Task:
    from dyt.models import get_family
    return TASKS[get_family(cfg.model.family).task](cfg, dist)
