"""The trainer app: window, menus, procedure screen, HUD, debrief (pygame)."""
