from clickstream.cli import main

raise SystemExit(main())
