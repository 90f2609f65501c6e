"""Fake of rlbench/backend/exceptions.py (stepjam/RLBench 02720bb): the same exception classes."""


class BoundaryError(Exception):
    pass


class WaypointError(Exception):
    def __init__(self, message, task):
        super().__init__("Error in task %s. %s" % (task.get_name(), message))


class NoWaypointsError(Exception):
    def __init__(self, message, task):
        super().__init__("Error in task %s. %s" % (task.get_name(), message))


class DemoError(Exception):
    def __init__(self, message, task):
        super().__init__("Error in task %s. %s" % (task.get_name(), message))


class InvalidActionError(Exception):
    pass


class TaskEnvironmentError(Exception):
    pass
