#include "CMitosisStacks.h"
