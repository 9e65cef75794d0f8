"""hbt-serve: the HTTP search API and search page (needs the serve extra: pip install 'hbt[serve]')."""
