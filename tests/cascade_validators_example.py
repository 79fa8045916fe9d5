"""A third-party cascade validator, loaded by ``module:attr`` in the tests."""


class MustMentionMock:
    name = "mentions_mock"

    def __init__(self, options):
        self.word = options.get("word", "mock")

    def check(self, question, draft):
        return 1.0 if self.word in draft.text.lower() else 0.0


class Broken:
    """A validator with a bug in both of its methods: the cascade must skip it, not fail the request."""

    name = "broken"

    def __init__(self, options):
        pass

    def route(self, question):
        raise RuntimeError("a bug before the draft")

    def check(self, question, draft):
        raise RuntimeError("a bug when judging")
