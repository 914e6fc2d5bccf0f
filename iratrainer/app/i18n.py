"""Every string the trainer shows, in French and English.

The language comes from the settings, else from the locale (``LANG``/``LC_ALL`` starting
with ``fr`` gives French), else English. ``tr(key, lang, **values)`` formats one string;
a test checks that every key has both languages and the same placeholders.
"""

from __future__ import annotations

import os

__all__ = ["STRINGS", "tr", "default_language"]

STRINGS: dict[str, dict[str, str]] = {
    "title": {"fr": "iratrainer — simulateur de thrombectomie", "en": "iratrainer — thrombectomy simulator"},
    "menu_help": {"fr": "Haut/Bas : choisir un cas · Entrée : commencer · L : English · Échap : quitter",
                  "en": "Up/Down: choose a case · Enter: start · L: français · Esc: quit"},
    "trainee": {"fr": "Interne : {name}", "en": "Trainee: {name}"},
    "no_trainee": {"fr": "Interne : (non enregistré)", "en": "Trainee: (not recorded)"},
    "locked": {"fr": "verrouillé", "en": "locked"},
    "level_navigation_basics": {"fr": "Bases de navigation", "en": "Navigation basics"},
    "level_arch": {"fr": "Crosse aortique", "en": "Aortic arch"},
    "level_intracranial": {"fr": "Navigation intracrânienne", "en": "Intracranial navigation"},
    "level_thrombectomy": {"fr": "Thrombectomie", "en": "Thrombectomy"},
    "briefing": {"fr": "Briefing", "en": "Briefing"},
    "patient": {"fr": "{sex}, {age} ans, NIHSS {nihss}, début il y a {onset} min",
                "en": "{sex}, {age} years, NIHSS {nihss}, onset {onset} min ago"},
    "objectives": {"fr": "Objectifs", "en": "Objectives"},
    "start_hint": {"fr": "Entrée : commencer · Échap : retour", "en": "Enter: start · Esc: back"},
    "frontal": {"fr": "Frontal", "en": "Frontal"},
    "lateral": {"fr": "Latéral", "en": "Lateral"},
    "hud_time": {"fr": "Temps {t}", "en": "Time {t}"},
    "hud_fluoro": {"fr": "Scopie {t}", "en": "Fluoro {t}"},
    "hud_dose": {"fr": "PDS {dap:.1f} Gy·cm²  Ka,r {kar:.0f} mGy", "en": "DAP {dap:.1f} Gy·cm²  Ka,r {kar:.0f} mGy"},
    "hud_contrast": {"fr": "Contraste {ml:.0f} mL", "en": "Contrast {ml:.0f} mL"},
    "hud_passes": {"fr": "Passages {n}  mTICI {tici}", "en": "Passes {n}  mTICI {tici}"},
    "hud_table": {"fr": "Table : {name} (I pour l'insérer, N/P pour changer)",
                  "en": "Table: {name} (I to insert, N/P to change)"},
    "hud_device": {"fr": "{mark} {name}: {mm:.0f} mm, {deg:.0f}°", "en": "{mark} {name}: {mm:.0f} mm, {deg:.0f}°"},
    "hud_carm": {"fr": "Arceau : frontal {flao:.0f}/{fcran:.0f}, latéral {llao:.0f}/{lcran:.0f}",
                 "en": "C-arm: frontal {flao:.0f}/{fcran:.0f}, lateral {llao:.0f}/{lcran:.0f}"},
    "hud_balloon": {"fr": "Ballonnet gonflé", "en": "Balloon inflated"},
    "hud_aspiration": {"fr": "Aspiration", "en": "Aspiration"},
    "warn_force": {"fr": "ATTENTION : force élevée au moyeu", "en": "WARNING: high force at the hub"},
    "warn_dose": {"fr": "ATTENTION : dose élevée", "en": "WARNING: high dose"},
    "message_refused": {"fr": "Impossible : {reason}", "en": "Not possible: {reason}"},
    "help_title": {"fr": "Commandes (H pour fermer)", "en": "Controls (H to close)"},
    "help_lines": {"fr": "1-9 choisir le matériel · Haut/Bas : pousser/retirer (Maj : lent) · Gauche/Droite : rotation · "
                         "Espace (maintenir) : scopie · F : cadence de scopie · D : DSA · J : injection manuelle · "
                         "R : feuille de route · "
                         "I/N/P : insérer / choisir sur la table · X : retirer le matériel · B : ballonnet · "
                         "A : aspiration · V : biplan · W : revoir la dernière DSA · O : vue 3-D · Échap : pause · "
                         "E : terminer · L : langue",
                   "en": "1-9 pick the device · Up/Down push/pull (Shift: slow) · Left/Right torque · "
                         "Space (hold): fluoroscopy · F: pulse rate · D: DSA · J: hand injection · R: roadmap · "
                         "I/N/P: insert / pick on "
                         "the table · X: remove the device · B: balloon · A: aspiration · V: biplane · "
                         "W: review the last DSA · O: 3-D view · Esc: pause · E: end · L: language"},
    "help_mouse": {"fr": "Souris : molette = pousser/retirer (5 mm par cran) · glisser à gauche/droite = rotation",
                   "en": "Mouse: wheel = push/pull (5 mm a notch) · drag left/right = torque"},
    "help_gamepad": {"fr": "Manette : stick gauche = pousser/retirer · stick droit = rotation · gâchette droite = "
                           "scopie · A : DSA · B : feuille de route · X : insérer · Y : retirer · LB/RB : matériel "
                           "en main · croix gauche/droite : table, haut/bas : cadence · gâchette gauche + stick gauche : "
                           "arceau · Start : pause · Back : aide",
                     "en": "Gamepad: left stick = push/pull · right stick = torque · right trigger = fluoroscopy · "
                           "A: DSA · B: roadmap · X: insert · Y: remove · LB/RB: device in hand · cross left/right: "
                           "table, up/down: pulse rate · left trigger + left stick: C-arm · Start: pause · Back: help"},
    "help_settings": {"fr": "Touches et manette : réglages dans {path}",
                      "en": "Keys and gamepad: settings in {path}"},
    "paused": {"fr": "Pause — Échap : reprendre · Q : abandonner", "en": "Paused — Esc: resume · Q: abort"},
    "debrief": {"fr": "Débriefing", "en": "Debrief"},
    "outcome_success": {"fr": "Réussite", "en": "Success"},
    "outcome_complication": {"fr": "Complication", "en": "Complication"},
    "outcome_ended": {"fr": "Procédure terminée", "en": "Procedure ended"},
    "outcome_aborted": {"fr": "Abandon", "en": "Aborted"},
    "outcome_time_limit": {"fr": "Temps dépassé", "en": "Time limit reached"},
    "outcome_dose_limit": {"fr": "Dose maximale atteinte", "en": "Dose limit reached"},
    "score": {"fr": "Score {score:.0f}/100 — {verdict}", "en": "Score {score:.0f}/100 — {verdict}"},
    "passed": {"fr": "niveau atteint", "en": "proficient"},
    "not_yet": {"fr": "pas encore", "en": "not yet"},
    "comp_outcome": {"fr": "résultat", "en": "outcome"},
    "comp_time": {"fr": "durée", "en": "time"},
    "comp_fluoro": {"fr": "scopie", "en": "fluoroscopy"},
    "comp_dose": {"fr": "dose", "en": "dose"},
    "comp_contrast": {"fr": "contraste", "en": "contrast"},
    "comp_passes": {"fr": "passages", "en": "passes"},
    "comp_safety": {"fr": "sécurité", "en": "safety"},
    "demo_written": {"fr": "Écrans du simulateur (cas par défaut) écrits dans {path}",
                     "en": "Trainer screens (default case) written to {path}"},
    "replay_hint": {"fr": "Relecture ×{speed} — {t} / {end} — Espace : lecture/pause · Gauche/Droite : ±10 s · "
                          "Haut/Bas : vitesse · clic sur la frise : aller à · Échap : quitter",
                    "en": "Replay ×{speed} — {t} / {end} — Space: play/pause · Left/Right: ±10 s · Up/Down: speed · "
                          "click the timeline: go to · Esc: quit"},
    "improve": {"fr": "À améliorer :", "en": "To improve:"},
    "debrief_hint": {"fr": "Entrée : retour aux cas", "en": "Enter: back to the cases"},
    "no_display": {"fr": "Pas d'écran : lancez « iratrainer play --headless --script FICHIER --screenshot-dir DOSSIER » "
                         "ou « iratrainer run CAS --headless --autopilot expert --out DOSSIER ».",
                   "en": "No display: run 'iratrainer play --headless --script FILE --screenshot-dir DIR' or "
                         "'iratrainer run CASE --headless --autopilot expert --out DIR'."},
    "who_trains": {"fr": "Qui s'entraîne ?", "en": "Who is training?"},
    "new_trainee": {"fr": "+ Nouvel interne", "en": "+ New trainee"},
    "no_recording": {"fr": "Continuer sans enregistrer", "en": "Continue without recording"},
    "records_at": {"fr": "Dossiers : {path}", "en": "Records: {path}"},
    "trainee_help": {"fr": "Haut/Bas : choisir · Entrée : valider · L : English · Échap : quitter",
                     "en": "Up/Down: choose · Enter: confirm · L: français · Esc: quit"},
    "type_name": {"fr": "Nom (prénom et nom) :", "en": "Name (first and last):"},
    "new_trainee_help": {"fr": "Entrée : créer · Retour arrière : effacer · Échap : annuler",
                         "en": "Enter: create · Backspace: erase · Esc: cancel"},
    "change_trainee": {"fr": "(T : changer)", "en": "(T: change)"},
    "review_label": {"fr": "revue DSA {k}/{n}", "en": "DSA review {k}/{n}"},
    "review_none": {"fr": "Pas encore de série DSA à revoir", "en": "No DSA run to review yet"},
    "hud_field": {"fr": "Arceau actif (K) : {plane}, champ {fov:g} cm{auto}, iris {coll:.0f} %, table (T) : {view}",
                  "en": "Active C-arm (K): {plane}, field {fov:g} cm{auto}, iris {coll:.0f} %, table (T): {view}"},
    "view_auto": {"fr": "suit la pointe", "en": "follows the tip"},
    "view_head": {"fr": "tête", "en": "head"},
    "view_neck": {"fr": "cou", "en": "neck"},
    "help_carm": {"fr": "Arceau : C (maintenir) + flèches = rotation OAG/OAD et crânial/caudal · K : plan frontal/latéral · "
                        "Z : champ (auto, 30, 22, 16, 11 cm) · [ / ] : fermer / ouvrir l'iris · "
                        "T : table (suit la pointe, tête, cou)",
                  "en": "C-arm: C (hold) + arrows = LAO/RAO and cranial/caudal · K: frontal/lateral plane · "
                        "Z: field (auto, 30, 22, 16, 11 cm) · [ / ]: close / open the iris · "
                        "T: table (follows the tip, head, neck)"},
    "hud_tip": {"fr": "pointe : {where}", "en": "tip: {where}"},
    "hud_beyond": {"fr": "{mm:+.0f} mm / {name}", "en": "{mm:+.0f} mm out of {name}"},
    "hud_pulse": {"fr": "Scopie pulsée {pps:g} i/s", "en": "Pulsed fluoro {pps:g} p/s"},
    "overview_title": {"fr": "Vue 3-D (O)", "en": "3-D view (O)"},
    "overview_exam": {"fr": "Mode examen : pas de vue 3-D", "en": "Exam mode: no 3-D view"},
    "exam_mode": {"fr": "MODE EXAMEN", "en": "EXAM MODE"},
    "notice_software": {"fr": "Affichage logiciel (sans OpenGL) : {why}",
                        "en": "Software display (no OpenGL): {why}"},
    "notice_no_gpu": {"fr": "Pas de carte graphique : {what} (rendu logiciel de Mesa)",
                      "en": "No GPU: {what} (Mesa's software rasterizer)"},
    "settings_warning": {"fr": "{path} : réglages illisibles ({why}) ; valeurs par défaut utilisées",
                         "en": "{path}: unreadable settings ({why}); using the defaults"},
}


def tr(key: str, lang: str, **values: object) -> str:
    """The string ``key`` in ``lang`` (``fr`` or ``en``), formatted with ``values``."""
    s = STRINGS[key].get(lang) or STRINGS[key]["en"]
    return s.format(**values) if values else s


def default_language() -> str:
    """``fr`` when the locale is French, else ``en``."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        v = os.environ.get(var, "")
        if v:
            return "fr" if v.lower().startswith("fr") else "en"
    return "en"
