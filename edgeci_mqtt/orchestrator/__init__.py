"""The orchestrator wing: serving requests (admission, plan cache), the run of one request,
its attempts, auctions and programs."""
