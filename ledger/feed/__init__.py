"""The change feed (SPEC §8): the log's entries after a cursor, each with what it changed.

A page is read in one snapshot: the entries with seq in [after, next), the latest
checkpoint, a range proof of those entries into it (`merkle.range_proof`), and for
every entry its effect (`ledger.consent.effects`) and the dataset obligations it
opened. Resuming from a cursor reads only what follows it: the entries by primary
key, and, for the subjects the page names, their state and decisions before it by
index.
"""

from ledger.feed.pages import ChangePage, FeedReader

__all__ = ["ChangePage", "FeedReader"]
