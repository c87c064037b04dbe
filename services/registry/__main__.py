from flywheel.app import run
from services.registry.definition import DEFINITION

if __name__ == "__main__":
    run(DEFINITION)
