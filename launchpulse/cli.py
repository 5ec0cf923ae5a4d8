"""Console entry point; the commands live in launchpulse.stream.cli."""

def main(argv=None):
    from launchpulse.stream.cli import main as _main
    return _main(argv)
