"""The package and the image as an operator gets them: built, installed, started."""
