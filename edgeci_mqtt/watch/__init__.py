"""What a watcher may see: senders' traffic reports and the live view of ``edgeci watch``."""
