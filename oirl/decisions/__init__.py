"""The decision store: every served recommendation and its outcome, durable in SQLite.

``records`` holds what a decision is (:class:`~oirl.decisions.records.Decision`, the
errors, the checks of ids, rewards and times); ``store`` the SQLite store the service
writes and ``oirl export-decisions`` reads (:class:`~oirl.decisions.store.DecisionStore`);
``export`` turns the decisions whose outcome is known into a partial log. The service
(:mod:`oirl.serve`) and the CLI both use it, so it sits below both.
"""
