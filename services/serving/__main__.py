from flywheel.app import run
from services.serving.definition import DEFINITION

if __name__ == "__main__":
    run(DEFINITION)
