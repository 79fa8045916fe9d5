"""A third-party cascade validator, loaded by ``module:attr`` in the tests."""


class MustMentionMock:
    name = "mentions_mock"

    def __init__(self, options):
        self.word = options.get("word", "mock")

    def check(self, question, draft):
        return 1.0 if self.word in draft.text.lower() else 0.0
