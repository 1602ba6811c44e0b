"""Topic words of the questions the script answers: what each FAQ is about, in callers' words.

Nearest examples compare whole phrasings, and two questions that share most of their words ("Le
conseiller, c'est qui ?" / "Le conseiller, c'est payant ?") can be nearer to the wrong FAQ than to
the right one. The word that carries the question's topic ("payant") is what decides for a person;
these patterns (on folded text, see rtcore.intents.text.fold) name, per FAQ, the words of its topic,
after the answer each FAQ gets in rtcore/dialog/script.yaml. The classifier adds a small bonus to
the FAQs whose topic was said: a tie-breaker between near candidates, not a decision on its own.
"""

from __future__ import annotations

import re
from typing import Final

# Each topic: alternatives (regular expressions on folded text), any of which names it.
_TOPIC_WORDS: Final[dict[str, tuple[str, ...]]] = {
    # who is calling: the company
    "faq1": (
        r"\bqui (?:etes vous|vous etes|est a l appareil|m appelle|est au (?:telephone|bout du fil))",
        r"\bvous etes qui\b", r"\bc est qui\b(?! qui)",
        r"\b(?:quelle|votre|de quelle|quel nom de|nom de votre) (?:societe|entreprise|boite|compagnie|agence)",
        r"\bpresentez vous", r"\bde la part de qui\b",
    ),
    # how the caller's number was obtained
    "faq2": (
        r"\b(?:comment|ou|qui|d ou)\b.*\b(?:mon|mes) (?:numero|telephone|coordonnees|contact)\b",
        r"\b(?:mon|mes) (?:numero|telephone|coordonnees)\b.*\b(?:comment|ou|eu|trouve|obtenu|sort)\b",
    ),
    # cost of the service
    "faq3": (
        r"\bgratuit", r"\bgratos\b", r"\bpayant", r"\bcout", r"\bprix\b", r"\btarif", r"\bfrais\b", r"\ba payer\b",
        r"\bpayer (?:quelque|combien|pour)", r"\b(?:le|la|les) payer\b", r"\bc est combien\b",
        r"\bcombien (?:ca |vous )?(?:coute|prenez|faut il payer)",
    ),
    # a scam?
    "faq4": (
        r"\barnaqu", r"\barnac", r"\bescro", r"\bbidon\b", r"\bserieux\b", r"\bconfiance\b", r"\blouche\b",
        r"\bvoleurs?\b", r"\bdemarchage", r"\bfiables?\b", r"\bhonnete", r"\blegal\b",
    ),
    # a robot?
    "faq5": (
        r"\brobot", r"\brobo\b", r"\bmachine\b", r"\bautomat", r"\benregistre", r"\bintelligence artificielle",
        r"\b(?:une|l|un) ia\b", r"\bordinateur", r"\bsynthese", r"\bserveur vocal", r"\brepondeur",
        r"\b(?:vous etes|c est|je parle a|je parle avec|parle a) "
        r"(?:un |une )?(?:vrai |vraie )?(?:humain|personne|reel)",
    ),
    # what the call is about
    "faq6": (
        r"\bpourquoi vous (?:m )?appel",
        r"\bc est (?:a quel (?:sujet|propos)|pour quoi|a propos de quoi|quoi le but|au sujet de quoi)",
        r"\bquel (?:sujet|est le but|est l objet|motif)",
        r"\bvous (?:m )?appelez (?:pour quoi|a quel|pourquoi|a propos|au sujet)",
        r"\bde quoi (?:il s agit|s agit il|vous (?:voulez )?(?:me )?parler)", r"\bvous (?:me )?voulez quoi\b",
        r"\bqu est ce que vous (?:me )?voulez", r"\bobjet de votre appel",
    ),
    # how long the call takes
    "faq7": (  # not the works' duration (faq23)
        r"^(?!.*\b(?:travaux|chantier|installation|delai)\b).*"
        r"\b(?:combien de (?:temps|minutes)|longtemps|long|longue|durer?|dure|rapide|court|questions|questionnaire)\b",
    ),
    # stop calling me
    "faq8": (
        r"\bbloc ?tel", r"\bretir", r"\bsupprim", r"\beffac", r"\braye", r"\benlev", r"\bne m appelez plus",
        r"\bplus (?:jamais )?(?:etre )?appele", r"\barret\w* (?:de m appeler|vos appels)",
        r"\bliste (?:rouge|noire|d opposition)", r"\bharcel", r"\bplus (?:recevoir|d appels)",
    ),
    # who will call back
    "faq9": (
        r"\bqui (?:va|me|m|c est qui|est ce qui|rappellera)\b.*\b(?:rappel|appel|contact|telephon|joindre)",
        r"\bconseiller\b.*\b(?:qui|chez vous|de votre|de quelle|quel genre|commercial|collegue|vient d ou"
        r"|travaille|specialis)",
        r"\bqui\b.*\bconseiller\b", r"\bquel genre de conseiller", r"\bquelqu un de (?:chez vous|votre)",
    ),
    # advancing money
    "faq10": (
        r"\bavanc", r"\bavance\b", r"\bpayer (?:avant|d abord|en avance|les travaux avant)", r"\bavant ou apres\b",
        r"\b(?:recoit|touche|versees?|percoit)\b.*\bavant\b", r"\bde (?:ma|notre) poche\b", r"\bapport\b",
        r"\btresorerie\b", r"\bdedui",
    ),
    # who does the works
    "faq11": (
        r"\brge\b", r"\bartisan", r"\binstallateur", r"\bposeur", r"\bplombier", r"\bchauffagiste",
        r"\bqui (?:fait|va faire|realise|fera|installe|pose|vient|viendra"
        r"|s occupe (?:des|de l|du) (?:travaux|installation|chantier|pose))",
        r"\b(?:quelle|une) (?:entreprise|societe)\b.*\b(?:travaux|chantier|installation|pose|renovation)",
        r"\bcertifi", r"\bagree", r"\bqualifi",
    ),
    # means-tested?
    "faq13": (
        r"\brevenu", r"\bressource", r"\bsalaire", r"\bgagne (?:bien|trop|peu)", r"\bimposab", r"\bimpot",
        r"\bmodeste", r"\bretraite?s?\b", r"\bplafond", r"\bpension",
    ),
    # which works
    "faq14": (
        r"\bquels? (?:travaux|types?|genres?) ", r"\bisol", r"\bfenetre", r"\btoiture", r"\bcombles", r"\bvmc\b",
        r"\bventilation", r"\bchauffe eau", r"\bvolets", r"\bvitrage",
        r"\bchanger (?:ma|la|de|mes) (?:vieille )?(?:chaudiere|chauffage|fenetres)", r"\bremplacer",
    ),
    # savings
    "faq15": (
        r"\beconom", r"\bfactures?\b", r"\brentab", r"\bmoins cher", r"\bgagner (?:combien|quoi)", r"\bvaut le coup",
    ),
    # a new house
    "faq16": (
        r"\bneuve?\b", r"\brecente?\b", r"\bconstrui", r"\bmoins de (?:\w+ )?ans\b", r"\brt ?2012\b",
        r"\bre ?2020\b",
    ),
    # send documentation
    "faq17": (
        r"\bmail", r"\bcourrier", r"\bdocumentation", r"\bdoc\b", r"\bbrochure", r"\bplaquette", r"\bdepliant",
        r"\bsms\b", r"\btexto", r"\bsite (?:internet|web)", r"\blien\b", r"\bpar ecrit", r"\benvoy",
    ),
    # are you the State?
    "faq18": (
        r"\betat\b", r"\banah\b", r"\bgouvernement", r"\bmairie", r"\bofficiel", r"\bpublic", r"\bministere",
        r"\bfrance renov", r"\bmandat", r"\bmissionn", r"\bregion\b", r"\bprive",
    ),
    # your phone number
    "faq19": (
        r"\bvotre numero", r"\bnumero (?:direct|de rappel|pour vous|ou vous|pour (?:vous )?joindre|de votre)",
        r"\bvous joindre", r"\bvous (?:re)?contacter", r"\bvous rappeler\b", r"\bligne directe", r"\ba quel numero",
    ),
    # talk to a person
    "faq20": (
        r"\bparler (?:a|avec) (?:un|une|quelqu|votre|le|la|des)", r"\bpassez moi",
        r"\bmettez moi en (?:relation|contact)", r"\bresponsable\b", r"\bsuperieur\b", r"\bchef\b", r"\bhumain\b",
        r"\bquelqu un de (?:vrai|reel)",
    ),
    # personal data
    "faq21": (
        r"\bdonnees", r"\binformations", r"\binfos\b", r"\brgpd", r"\brevend", r"\bvend(?:re|ez|u|ues)\b",
        r"\bconfidenti", r"\bpartag", r"\bgard(?:ez|er|erez)\b", r"\bprotege", r"\bcirculent",
    ),
    # when works start
    "faq23": (
        r"\bdelai", r"\bquand\b.*\b(?:(?:travaux|chantier|installation|pose|renovation)|commenc|demarr)",
        r"\b(?:(?:travaux|chantier|installation|pose|renovation)|commenc\w*|demarr\w*)\b.*\bquand\b",
        r"\b(?:travaux|chantier|installation|pose|renovation)\b.*\b(?:commenc|demarr)", r"\bintervenir",
        r"\bintervention", r"\bavant l hiver", r"\battente\b",
        r"\bcombien de temps\b.*\b(?:travaux|chantier|installation|pose|renovation)",
        r"\b(?:travaux|chantier|installation|pose|renovation)\b.*\bcombien de temps\b",
    ),
    # a visit at home
    "faq24": (
        r"\bvisite", r"\bvenir (?:chez|a la maison|voir)", r"\bpasser (?:chez|a la maison|a domicile)",
        r"\bdomicile", r"\btechnicien", r"\bpresente?\b", r"\bsur place", r"\bdiagnostic",
        r"\bvient (?:chez|a la maison)", r"\bse deplacer", r"\bvienne (?:a la maison|chez|voir)",
    ),
    # which help
    "which_help": (
        r"\bquelles? (?:sont )?(?:les |ces )?(?:aides?|primes?|subventions?)",
        r"\bc est quoi (?:les |ces |comme )(?:aides?|primes?|subventions?)", r"\bmaprimerenov", r"\bma prime renov",
        r"\bcee\b", r"\bcertificats? d economie", r"\bcoup de pouce",
        r"\b(?:aides?|primes?|subventions?)\b.*\b(?:lesquelles|quoi|quel|quelle)\b",
    ),
}
TOPICS: Final[dict[str, re.Pattern[str]]] = {name: re.compile("|".join(words)) for name, words in _TOPIC_WORDS.items()}


def topics_said(text: str) -> list[str]:
    """The questions whose topic words the folded text has, in TOPICS order."""
    return [name for name, pattern in TOPICS.items() if pattern.search(text)]


def topic_said(name: str, text: str) -> bool:
    """Whether the folded text has the topic words of question `name`."""
    return TOPICS[name].search(text) is not None
