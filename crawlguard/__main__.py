from crawlguard.cli import main

raise SystemExit(main())
