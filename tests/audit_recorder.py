"""An audit object for tests: keeps every ``log_event`` call in ``events`` (nothing on disk)."""


class Recorder:
    def __init__(self):
        self.events = []

    def log_event(self, action, status, details):
        self.events.append((action, status, details))
        return {}

    def has(self, action, status):
        return (action, status) in [(a, s) for a, s, _ in self.events]
