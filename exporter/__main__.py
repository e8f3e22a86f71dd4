from .cli import main

if __name__ == "__main__":  # not when a parsing child process (schema.load_yaml_file) imports it
    raise SystemExit(main())
