"""Audio plugin: microphone speech enhanced by mask refinement, recognised, handed to language."""
