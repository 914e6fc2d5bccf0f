"""Device physics: the catalogue, elastic rods in the lumen, coaxial stacks, contact and torque."""
