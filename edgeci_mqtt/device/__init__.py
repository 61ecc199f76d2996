"""The device wing: its agent loop and announcements, bidder, weights ledger, worker,
and the programs and rows it holds."""
